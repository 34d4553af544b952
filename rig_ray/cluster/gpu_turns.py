"""Engines on shares of one GPU load in turn: `load_in_turn`.

vLLM sizes its KV cache from the drop in the GPU's free memory while it loads. Two engines
loading side by side on one GPU would each count the other's memory as their own, and start
short of cache, or not at all. So an actor that holds a share of a GPU (`num_gpus` between 0
and 1) takes that GPU's turn while its generator loads: an exclusive lock on a file named
after the GPU in the node's temporary folder, which every process of the node sees. The lock
goes when the load ends, or with the process if it dies. Batch actors, Serve replicas,
`rr.remote()` actors and pipeline stages all load through here, so engines on one GPU take
turns whichever path started them, across jobs too.

Only generators that measure the GPU's free memory as they load
(`Generator.measures_free_gpu_memory`) wait; the others load at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import tempfile
import typing as t

if t.TYPE_CHECKING:
    from rig_ray.generator.base import Generator

logger = logging.getLogger(__name__)


def load_in_turn(generator: Generator) -> None:
    """`generator.load()`, holding the turn of each GPU this process has a share of when the
    generator measures the GPU's free memory as it loads (blocking: call it off any loop)."""
    with shared_gpu_turn() if generator.measures_free_gpu_memory() else contextlib.nullcontext():
        generator.load()


@contextlib.contextmanager
def shared_gpu_turn() -> t.Iterator[None]:
    """Hold the turn of every GPU that this process (a Ray actor or task) has a share of
    (none outside Ray, or with whole GPUs or none)."""
    with contextlib.ExitStack() as held:
        for gpu in shared_gpus():  # sorted: two sharing two GPUs cannot wait on each other
            held.enter_context(_turn(gpu))
        yield


def shared_gpus() -> list[str]:
    """The ids (on this node) of the GPUs this process holds a share of, sorted."""
    ray = sys.modules.get("ray")  # a process that never imported Ray holds no share
    if ray is None or not ray.is_initialized():
        return []
    try:
        share = ray.get_runtime_context().get_assigned_resources().get("GPU", 0)
    except AssertionError:  # Ray's answer for a driver, which holds no resources
        return []
    if not 0 < share < 1:
        return []
    return sorted(str(gpu) for gpu in ray.get_gpu_ids())


def lock_path(gpu: str) -> str:
    """The file whose lock is the turn of GPU `gpu` on this node."""
    return os.path.join(tempfile.gettempdir(), f"rig_ray-gpu-{gpu}.load.lock")


@contextlib.contextmanager
def _turn(gpu: str) -> t.Iterator[None]:
    descriptor = os.open(lock_path(gpu), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another engine on GPU %s to finish loading", gpu)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # the lock goes with it


__all__: t.Sequence[str] = ["load_in_turn", "lock_path", "shared_gpu_turn", "shared_gpus"]
