"""An event loop on a thread of its own, which async engines live on and callers reach from
any loop (a Ray actor's, a Serve replica's, the one `asyncio.run` makes for a sync call).

An async engine binds its sockets and background tasks to the loop it was started on, so it
must stay on one loop for its whole life; callers come and go on theirs. Cancelling a call (or
closing a stream) on the caller's side cancels the work on the engine's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import typing as t

from rig_ray.errors import GenerationError

_T = t.TypeVar("_T")
_END = object()


class EngineLoop:
    """A running event loop, owned (a daemon thread started here) or borrowed (a loop where an
    engine built elsewhere already lives)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread | None) -> None:
        self._loop = loop
        self._thread = thread

    @classmethod
    def start(cls, name: str) -> EngineLoop:
        """A new loop running on a new daemon thread called `name`."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        ready.wait()
        return cls(loop, thread)

    @classmethod
    def borrow(cls, loop: asyncio.AbstractEventLoop) -> EngineLoop:
        """A loop that runs elsewhere (and is never stopped from here)."""
        return cls(loop, None)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def _here(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def run_sync(self, coro: t.Coroutine[t.Any, t.Any, _T], timeout: float | None = None) -> _T:
        """Run `coro` on the loop and block this (non-loop) thread until it is done."""
        if self._here():
            coro.close()
            raise RuntimeError("run_sync would block the engine's own loop; await call() instead")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def call(self, coro: t.Coroutine[t.Any, t.Any, _T]) -> _T:
        """Await `coro` run on the loop; cancelling this call cancels it there."""
        if self._here():
            return await coro
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            _raise_if_stopped_elsewhere()
            raise

    async def stream(self, make: t.Callable[[], t.AsyncIterator[_T]]) -> t.AsyncIterator[_T]:
        """Iterate, on the caller's loop, the async iterator that `make()` gives on this loop.

        Items are handed over as they come. Leaving the loop early (break, an error, a
        cancelled task, `aclose()`) cancels the iteration on the engine's loop.
        """
        if self._here():
            async for item in make():
                yield item
            return
        caller = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[t.Any, BaseException | None]] = asyncio.Queue()

        def hand_over(item: t.Any, error: BaseException | None = None) -> None:
            # A closed caller loop (RuntimeError) means nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                caller.call_soon_threadsafe(queue.put_nowait, (item, error))

        async def pump() -> None:
            try:
                async for item in make():
                    hand_over(item)
            except BaseException as error:  # every ending is handed over
                hand_over(_END, error)
                if isinstance(error, asyncio.CancelledError):
                    raise
            else:
                hand_over(_END)

        future: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(
            pump(), self._loop
        )
        try:
            while True:
                item, error = await queue.get()
                if item is _END:
                    if isinstance(error, asyncio.CancelledError):
                        _raise_if_stopped_elsewhere()
                    if error is not None:
                        raise error
                    return
                yield item
        finally:
            future.cancel()

    def stop(self) -> None:
        """Stop an owned loop and wait for its thread; a borrowed loop is left running.

        Work still running on the loop is cancelled first, so its callers hear of it."""
        if self._thread is None or not self._loop.is_running():
            return
        if threading.current_thread() is not self._thread:
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                asyncio.run_coroutine_threadsafe(_cancel_others(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)


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
        raise GenerationError("the engine stopped (unloaded) while the request ran")
