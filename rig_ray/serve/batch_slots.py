"""`FairSlots`: the batch requests an ingress replica lets into the model deployments at once.

All batches together hold at most `size` slots, so online requests find at most that many
batch requests ahead of them. When a slot frees, it goes to the next batch in turn (round
robin over the batches that wait), not to whichever batch queued the most rows: batches side
by side share the engine evenly. A batch that is stopped has its waiting requests refused.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import typing as t


class SlotsClosed(Exception):
    """The batch was stopped (cancelled, expired, or taken over) while its request waited."""


class FairSlots:
    """At most `size` holders at once, granted round robin over the keys that wait."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self.held: collections.Counter[str] = collections.Counter()
        self._waiting: collections.OrderedDict[str, collections.deque[asyncio.Future[None]]] = (
            collections.OrderedDict()
        )
        self._closed: set[str] = set()

    @property
    def in_use(self) -> int:
        return sum(self.held.values())

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> t.AsyncIterator[None]:
        """A slot for one request of `key`, for the `async with` block."""
        await self._acquire(key)
        try:
            yield
        finally:
            self._release(key)

    def close(self, key: str) -> None:
        """Refuse `key`'s waiting and future requests with SlotsClosed (until `open`)."""
        self._closed.add(key)
        for future in self._waiting.pop(key, ()):
            if not future.done():
                future.set_exception(SlotsClosed(key))

    def open(self, key: str) -> None:
        self._closed.discard(key)

    async def _acquire(self, key: str) -> None:
        if key in self._closed:
            raise SlotsClosed(key)
        if self.in_use < self.size and not self._waiting:
            self.held[key] += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, collections.deque()).append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self._release(key)  # granted just as the caller left: pass it on
            else:
                self._forget(key, future)
            raise

    def _forget(self, key: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(key)
        if queue is not None and future in queue:
            queue.remove(future)
            if not queue:
                del self._waiting[key]

    def _release(self, key: str) -> None:
        self.held[key] -= 1
        if self.held[key] <= 0:
            del self.held[key]
        while self._waiting and self.in_use < self.size:
            turn, queue = next(iter(self._waiting.items()))
            future = queue.popleft()
            if queue:
                self._waiting.move_to_end(turn)  # its next request waits for the others' turn
            else:
                del self._waiting[turn]
            if not future.done():
                self.held[turn] += 1
                future.set_result(None)
