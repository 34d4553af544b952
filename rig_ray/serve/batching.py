"""`BatchMerger`: the stage between `@serve.batch` and the engine that keeps batches large
under load.

Serve forms a batch every `batch_wait_timeout_s` whether or not the engine is free; its
`max_concurrent_batches` only bounds how many run. Behind a busy engine, a queue of small
batches builds up and each becomes its own engine call. The merger runs at most `concurrency`
calls at once and, when one ends, sends everything that waits (up to `max_items`) as the next.
"""

from __future__ import annotations

import asyncio
import collections
import typing as t

_I = t.TypeVar("_I")
_R = t.TypeVar("_R")


class BatchMerger(t.Generic[_I, _R]):
    """Runs `run(items)` for submitted batches, merging the ones that wait for a free slot."""

    def __init__(
        self,
        run: t.Callable[[list[_I]], t.Awaitable[list[_R]]],
        *,
        concurrency: int = 1,
        max_items: int = 32,
    ) -> None:
        self._run = run
        self.concurrency = concurrency
        """Calls of `run` at once."""
        self.max_items = max_items
        """Most items merged into one call (a bigger submitted batch still runs whole)."""
        self._waiting: collections.deque[tuple[list[_I], asyncio.Future[list[_R]]]] = (
            collections.deque()
        )
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, items: list[_I]) -> list[_R]:
        """The results of `items`, in order, from whichever call they end up in."""
        future: asyncio.Future[list[_R]] = asyncio.get_running_loop().create_future()
        self._waiting.append((items, future))
        self._start()
        return await future

    def _start(self) -> None:
        while self._waiting and self._running < self.concurrency:
            group = [self._waiting.popleft()]
            size = len(group[0][0])
            while self._waiting and size + len(self._waiting[0][0]) <= self.max_items:
                size += len(self._waiting[0][0])
                group.append(self._waiting.popleft())
            self._running += 1
            task = asyncio.create_task(self._run_group(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_group(self, group: list[tuple[list[_I], asyncio.Future[list[_R]]]]) -> None:
        try:
            results = await self._run([item for items, _ in group for item in items])
        except Exception as error:
            for _, future in group:
                if not future.done():
                    future.set_exception(error)
        else:
            offset = 0
            for items, future in group:
                if not future.done():  # its caller may have gone (a client that hung up)
                    future.set_result(results[offset : offset + len(items)])
                offset += len(items)
        finally:
            self._running -= 1
            self._start()
