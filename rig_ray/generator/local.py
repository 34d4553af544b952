"""The base of generators whose engine lives in this process (transformers, vLLM)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
import typing as t
from concurrent.futures import Future, ThreadPoolExecutor

from pydantic import PrivateAttr

from rig_ray.generator.base import Generator

_R = t.TypeVar("_R")

BATCH_STARTED: contextvars.ContextVar[t.Callable[[], None] | None] = contextvars.ContextVar(
    "rig_ray_batch_started", default=None
)
"""Set by a caller that wants to know when its call reaches the engine thread (the clock of
`batch_timeout_s` starts then, not while the call waits behind others)."""
_CANCELLED: threading.local = threading.local()


def cancelled() -> bool:
    """Whether the engine call running on this (engine) thread was given up by its caller:
    generation loops check it and stop early."""
    event: threading.Event | None = getattr(_CANCELLED, "event", None)
    return event is not None and event.is_set()


class LocalGenerator(Generator):
    """A generator with an engine in memory, driven from one thread of its own.

    Engine calls block, so they never run on the event loop. They all run on the same thread:
    torch keeps an OpenMP thread team per calling thread, and teams of different threads fight
    over the cores (a fifth of transformers' throughput on 2 cores). `_lock` serialises load
    and unload (and, for transformers, generation; vLLM's async engine takes requests from any
    number of calls at once).
    """

    _lock: threading.RLock = PrivateAttr(default_factory=threading.RLock)
    _worker: ThreadPoolExecutor | None = PrivateAttr(None)
    _worker_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    """Guards making the engine thread only: `_lock` is held by the engine thread while a
    batch runs, and the event loop must never wait on it."""
    _restart_in_place: bool = PrivateAttr(True)

    def leave_a_dead_engine_to_its_owner(self) -> None:
        """Never start a dead engine again in place: calls fail with `EngineDeadError`, and
        whoever holds this generator starts it again (a batch actor exits, and Ray restarts
        it). A restart in place would race that exit, and could leave an engine process
        behind it."""
        self._restart_in_place = False

    async def _in_engine_thread(self, fn: t.Callable[..., _R], *args: t.Any) -> _R:
        """Run `fn(*args)` on this generator's engine thread without blocking the loop.

        A call cancelled while it waits for the thread never runs; one cancelled while it
        runs sees `cancelled()` turn true (generation loops stop on it). `BATCH_STARTED`'s
        callback, if the caller set one, is called on the loop when the call starts running.
        """
        with self._worker_lock:
            if self._worker is None:
                name = f"rig_ray-{type(self).__name__}"
                self._worker = ThreadPoolExecutor(1, thread_name_prefix=name)
            worker = self._worker
        loop = asyncio.get_running_loop()
        started, stop = BATCH_STARTED.get(), threading.Event()

        def job() -> _R:
            if stop.is_set():
                raise asyncio.CancelledError
            if started is not None:
                loop.call_soon_threadsafe(started)
            _CANCELLED.event = stop
            try:
                return fn(*args)
            finally:
                _CANCELLED.event = None

        waiting = _StopOnCancel(stop, loop=loop)
        worker.submit(job).add_done_callback(functools.partial(_hand_back, loop, waiting))
        try:
            return await waiting
        except asyncio.CancelledError:
            stop.set()
            raise


class _StopOnCancel(asyncio.Future[t.Any]):
    """The loop's side of an engine-thread call. Cancelling it sets the call's stop event at
    once, not on the loop's next turn: the engine thread may take the call up in between (the
    call before it has just ended), and must find it given up."""

    def __init__(self, stop: threading.Event, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._stop = stop

    def cancel(self, msg: t.Any | None = None) -> bool:
        self._stop.set()
        return super().cancel(msg=msg)


def _hand_back(
    loop: asyncio.AbstractEventLoop, waiting: asyncio.Future[t.Any], done: Future[t.Any]
) -> None:
    """On the engine thread: settle `waiting` on its loop, unless that loop has ended."""
    with contextlib.suppress(RuntimeError):  # the loop is closed
        loop.call_soon_threadsafe(_settle, waiting, done)


def _settle(waiting: asyncio.Future[t.Any], done: Future[t.Any]) -> None:
    """Hand the engine thread's outcome to the loop's future (unless it was given up)."""
    if waiting.done():
        return
    error = done.exception()
    if error is not None:
        waiting.set_exception(error)
    else:
        waiting.set_result(done.result())
