"""An event loop on a thread of its own, which async engines live on and callers reach from
any loop (a Ray actor's, a Serve replica's, the one `asyncio.run` makes for a sync call).

An async engine binds its sockets and background tasks to the loop it was started on, so it
must stay on one loop for its whole life; callers come and go on theirs. Cancelling a call (or
closing a stream) on the caller's side cancels the work on the engine's loop.

Every call ends: work submitted before `stop()` is cancelled (its caller gets a
`GenerationError`), work submitted after it is refused at once, and a caller also gives up
when the loop is found closed with its work still pending.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
import typing as t

from rig_ray.errors import GenerationError

_T = t.TypeVar("_T")
_END = object()
_STOPPED = "the engine stopped (unloaded) while the request ran"
POLL_S = 1.0
"""How often a waiting caller checks that the engine's loop still runs."""


class EngineLoop:
    """A running event loop, owned (a daemon thread started here) or borrowed (a loop where an
    engine built elsewhere already lives)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread | None) -> None:
        self._loop = loop
        self._thread = thread
        self._closed = False
        self._guard = threading.Lock()
        self._pending: set[concurrent.futures.Future[t.Any]] = set()

    @classmethod
    def start(cls, name: str) -> EngineLoop:
        """A new loop running on a new daemon thread called `name`."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        engine_loop = cls(loop, None)

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            engine_loop._finish()

        thread = engine_loop._thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        ready.wait()
        return engine_loop

    @classmethod
    def borrow(cls, loop: asyncio.AbstractEventLoop) -> EngineLoop:
        """A loop that runs elsewhere (and is never stopped from here)."""
        return cls(loop, None)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def closed(self) -> bool:
        """Whether the loop takes no more work (stopped, or no longer running)."""
        return self._closed or self._loop.is_closed() or not self._loop.is_running()

    def _here(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _submit(self, coro: t.Coroutine[t.Any, t.Any, _T]) -> concurrent.futures.Future[_T]:
        """Schedule `coro` on the loop, or refuse it with a GenerationError once it stopped."""
        with self._guard:
            if self.closed:
                coro.close()
                raise GenerationError(f"{_STOPPED}: the engine's loop takes no more requests")
            try:
                future = asyncio.run_coroutine_threadsafe(coro, self._loop)
            except RuntimeError as error:  # closed between the check and the call
                coro.close()
                raise GenerationError(_STOPPED) from error
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: concurrent.futures.Future[t.Any]) -> None:
        with self._guard:
            self._pending.discard(future)

    def run_sync(self, coro: t.Coroutine[t.Any, t.Any, _T], timeout: float | None = None) -> _T:
        """Run `coro` on the loop and block this (non-loop) thread until it is done."""
        if self._here():
            coro.close()
            raise RuntimeError("run_sync would block the engine's own loop; await call() instead")
        return self._submit(coro).result(timeout)

    async def call(self, coro: t.Coroutine[t.Any, t.Any, _T], timeout: float | None = None) -> _T:
        """Await `coro` run on the loop; cancelling this call cancels it there.

        A call that the loop's stop overtakes ends with a GenerationError; so does one still
        running after `timeout` seconds (unset: no limit while the loop runs)."""
        if self._here():
            return await asyncio.wait_for(coro, timeout)
        future = self._submit(coro)
        wrapped = asyncio.wrap_future(future)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                done, _ = await asyncio.wait({wrapped}, timeout=_poll(deadline))
                if done:
                    return wrapped.result()
                if self.closed:
                    raise GenerationError(_STOPPED)
                if deadline is not None and time.monotonic() >= deadline:
                    raise GenerationError(f"the engine call ran past its {timeout:g} s limit")
        except asyncio.CancelledError:
            wrapped.cancel()
            _raise_if_stopped_elsewhere()
            raise
        except GenerationError:
            wrapped.cancel()
            raise

    async def stream(
        self,
        make: t.Callable[[], t.AsyncIterator[_T]],
        merge: t.Callable[[list[_T]], _T] | None = None,
    ) -> t.AsyncIterator[_T]:
        """Iterate, on the caller's loop, the async iterator that `make()` gives on this loop.

        Items cross over in batches: whatever the engine made while the caller was busy is
        taken at once, with one wake-up of the caller's loop per batch, and `merge` (when
        given) joins a batch into one item. Leaving the loop early (break, an error, a
        cancelled task, `aclose()`) cancels the iteration on the engine's loop.
        """
        if self._here():
            async for item in make():
                yield item
            return
        handoff = _Handoff(asyncio.get_running_loop())

        async def pump() -> None:
            try:
                async for item in make():
                    handoff.put(item)
            except BaseException as error:  # every ending is handed over
                handoff.put(_END, error)
                if isinstance(error, asyncio.CancelledError):
                    raise
            else:
                handoff.put(_END)

        try:
            future = self._submit(pump())
        except GenerationError:
            handoff.close()
            raise
        try:
            while True:
                taken = await handoff.take(lambda: self._gone(future))
                items = [item for item, _ in taken if item is not _END]
                if merge is not None and len(items) > 1:
                    items = [merge(items)]
                for item in items:
                    yield item
                for item, error in taken:
                    if item is _END:
                        if isinstance(error, asyncio.CancelledError):
                            _raise_if_stopped_elsewhere()
                        if error is not None:
                            raise error
                        return
        finally:
            handoff.close()
            future.cancel()

    def _gone(self, future: concurrent.futures.Future[t.Any]) -> BaseException | None:
        """Why a stream's pump will hand nothing more over, if it will not."""
        if future.done():
            return GenerationError(_STOPPED) if future.cancelled() else future.exception()
        return GenerationError(_STOPPED) if self.closed else None

    def stop(self) -> None:
        """Stop an owned loop and wait for its thread; a borrowed loop is left running.

        New work is refused from here on, and work still running on the loop is cancelled
        first, so its callers hear of it."""
        if self._thread is None or not self._loop.is_running():
            return
        with self._guard:
            self._closed = True
        if threading.current_thread() is not self._thread:
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                asyncio.run_coroutine_threadsafe(_cancel_others(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    def _finish(self) -> None:
        """On the loop's thread once it stopped: cancel what started meanwhile, fail what
        never started, and close the loop."""
        with self._guard:
            self._closed = True
        with contextlib.suppress(RuntimeError):
            self._loop.run_until_complete(_cancel_others())
        with self._guard:
            left = list(self._pending)
        for future in left:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                if not future.done():
                    future.set_exception(GenerationError(_STOPPED))
        self._loop.close()


class _Handoff:
    """Items from the engine's thread to a caller's loop: a buffer, and at most one wake-up
    of the caller in flight (the next one is sent only after the caller took the buffer).
    A timer wakes the caller every POLL_S as well, to check that items can still come."""

    def __init__(self, caller: asyncio.AbstractEventLoop) -> None:
        self._caller = caller
        self._lock = threading.Lock()
        self._buffer: list[tuple[t.Any, BaseException | None]] = []
        self._woken = False
        self._ready = asyncio.Event()
        self._ticks = 0
        self._timer = caller.call_later(POLL_S, self._tick)

    def _tick(self) -> None:
        self._ticks += 1
        self._ready.set()
        self._timer = self._caller.call_later(POLL_S, self._tick)

    def close(self) -> None:
        self._timer.cancel()

    def put(self, item: t.Any, error: BaseException | None = None) -> None:
        with self._lock:
            self._buffer.append((item, error))
            if self._woken:
                return
            self._woken = True
        # A closed caller loop (RuntimeError) means nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._caller.call_soon_threadsafe(self._ready.set)

    async def take(
        self, gone: t.Callable[[], BaseException | None]
    ) -> list[tuple[t.Any, BaseException | None]]:
        """Everything handed over since the last take (at least one item); `gone()` is asked
        when a poll period passes with nothing handed over, and its error ends the wait."""
        ticks = self._ticks
        while True:
            with self._lock:
                if self._buffer:
                    taken, self._buffer = self._buffer, []
                    self._woken = False
                    return taken
                self._ready.clear()  # a wake-up for items already taken, or a tick
            if self._ticks != ticks:
                ticks = self._ticks
                error = gone()
                if error is not None:
                    raise error
            await self._ready.wait()


def _poll(deadline: float | None) -> float:
    if deadline is None:
        return POLL_S
    return max(min(POLL_S, deadline - time.monotonic()), 0.0)


async def _cancel_others() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _raise_if_stopped_elsewhere() -> None:
    """A cancellation that came from the engine's side (its loop stopped) is an error of the
    call, not a cancellation of the caller."""
    task = asyncio.current_task()
    if task is None or not task.cancelling():
        raise GenerationError(_STOPPED)
