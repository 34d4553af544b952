"""`BatchMerger`: groups concurrent requests into generate calls that grow with the load.

A request that finds the engine idle waits up to `wait_s` for others to join it (or until
`max_items`). While `concurrency` calls run, everything that arrives waits, and when a call
ends the next one takes all of it (up to `max_items`). A caller that leaves (a client that
hung up, a request past its timeout) drops its items; a running call whose callers have all
left is cancelled, so a hung engine call never holds the engine's slot for the requests after.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
import typing as t

_I = t.TypeVar("_I")
_R = t.TypeVar("_R")


@dataclasses.dataclass
class _Entry(t.Generic[_I, _R]):
    items: list[_I]
    future: asyncio.Future[list[_R]]
    arrived: float


class BatchMerger(t.Generic[_I, _R]):
    """Runs `run(items)` for submitted batches, merging the ones that wait for a free slot."""

    def __init__(
        self,
        run: t.Callable[[list[_I]], t.Awaitable[list[_R]]],
        *,
        concurrency: int = 1,
        max_items: int = 32,
        wait_s: float = 0.0,
    ) -> None:
        self._run = run
        self.concurrency = concurrency
        """Calls of `run` at once."""
        self.max_items = max_items
        """Most items merged into one call (a bigger submitted batch still runs whole)."""
        self.wait_s = wait_s
        """Longest wait for more items when a call could start at once."""
        self._waiting: collections.deque[_Entry[_I, _R]] = collections.deque()
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    async def submit(self, items: list[_I]) -> list[_R]:
        """The results of `items`, in order, from whichever call they end up in."""
        loop = asyncio.get_running_loop()
        entry: _Entry[_I, _R] = _Entry(items, loop.create_future(), time.monotonic())
        self._waiting.append(entry)
        self._start()
        return await entry.future

    def _start(self) -> None:
        self._timer = None
        while self._running < self.concurrency:
            while self._waiting and self._waiting[0].future.done():  # its caller left
                self._waiting.popleft()
            if not self._waiting:
                return
            due = self._waiting[0].arrived + self.wait_s
            waiting = sum(len(entry.items) for entry in self._waiting)
            if waiting < self.max_items and time.monotonic() < due:
                if self._timer is None:
                    self._timer = asyncio.get_running_loop().call_at(
                        asyncio.get_running_loop().time() + due - time.monotonic(), self._start
                    )
                return
            self._launch(self._next_group())

    def _next_group(self) -> list[_Entry[_I, _R]]:
        group = [self._waiting.popleft()]
        size = len(group[0].items)
        while self._waiting and size + len(self._waiting[0].items) <= self.max_items:
            entry = self._waiting.popleft()
            if not entry.future.done():
                size += len(entry.items)
                group.append(entry)
        return group

    def _launch(self, group: list[_Entry[_I, _R]]) -> None:
        self._running += 1
        task = asyncio.create_task(self._run_group(group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        def caller_left(_: asyncio.Future[list[_R]]) -> None:
            if all(entry.future.done() for entry in group) and not task.done():
                task.cancel()  # nobody waits for this call any more

        for entry in group:
            entry.future.add_done_callback(caller_left)

    async def _run_group(self, group: list[_Entry[_I, _R]]) -> None:
        try:
            results = await self._run([item for entry in group for item in entry.items])
        except asyncio.CancelledError:
            return  # every caller had left
        except Exception as error:
            for entry in group:
                if not entry.future.done():
                    entry.future.set_exception(error)
        else:
            offset = 0
            for entry in group:
                if not entry.future.done():  # its caller may have gone (a client that hung up)
                    entry.future.set_result(results[offset : offset + len(entry.items)])
                offset += len(entry.items)
        finally:
            self._running -= 1
            self._start()
