"""Helpers that run inside a generator's actor: the load/generate gate and memory upkeep."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import typing as t

from rig_ray.errors import GenerationError


class Gate:
    """Many generation calls at once, or one load/unload alone.

    An unload waits for running batches, and a waiting unload holds back new ones.
    """

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.asynccontextmanager
    async def shared(self) -> t.AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writer and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            async with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> t.AsyncIterator[None]:
        async with self._cond:
            self._writers_waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._writer and not self._readers)
            except BaseException:  # cancelled while waiting: readers held back may go now
                self._writers_waiting -= 1
                self._cond.notify_all()
                raise
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            async with self._cond:
                self._writer = False
                self._cond.notify_all()


def trim_memory() -> None:
    """Hand freed heap pages back to the OS, so an unloaded actor's RSS really drops."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_bytes() -> int | None:
    """This process's resident memory, where /proc tells it."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def portable_error(error: BaseException, index: int | None = None) -> BaseException:
    """`error` if it survives pickling both ways, else a GenerationError with its text.

    An exception can pickle and still fail to unpickle (an `__init__` with keyword-only
    arguments, common in HTTP client errors); in the driver that loses the whole batch.
    """
    from ray import cloudpickle

    try:
        cloudpickle.loads(cloudpickle.dumps(error))
    except Exception:
        return GenerationError(f"{type(error).__name__}: {error}", index=index)
    return error


def portable(results: t.Sequence[t.Any]) -> list[t.Any]:
    """Per-item results with every exception picklable, so the batch survives the trip back."""
    return [
        portable_error(result, index) if isinstance(result, BaseException) else result
        for index, result in enumerate(results)
    ]


@contextlib.contextmanager
def portable_errors() -> t.Iterator[None]:
    """Re-raise an error that would not survive the trip back as a GenerationError with its
    text (Ray would otherwise hand the driver an error that no longer says what failed)."""
    try:
        yield
    except Exception as error:
        replacement = portable_error(error)
        if replacement is error:
            raise
        raise replacement from None
