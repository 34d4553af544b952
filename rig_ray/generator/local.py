"""The base of generators whose engine lives in this process (transformers, vLLM)."""

from __future__ import annotations

import asyncio
import threading
import typing as t
from concurrent.futures import ThreadPoolExecutor

from pydantic import PrivateAttr

from rig_ray.generator.base import Generator

_R = t.TypeVar("_R")


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

    async def _in_engine_thread(self, fn: t.Callable[..., _R], *args: t.Any) -> _R:
        """Run `fn(*args)` on this generator's engine thread without blocking the loop (not
        even while another thread holds `_lock` for a load or an unload)."""
        with self._worker_lock:
            if self._worker is None:
                name = f"rig_ray-{type(self).__name__}"
                self._worker = ThreadPoolExecutor(1, thread_name_prefix=name)
            worker = self._worker
        return await asyncio.get_running_loop().run_in_executor(worker, fn, *args)
