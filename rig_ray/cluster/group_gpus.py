"""The GPUs of this actor's placement group that an engine's own Ray workers hold.

vLLM's Ray executor (an engine over several GPUs, see `placement.placed_engine_args`) starts
one worker actor per GPU in the placement group of the actor that loads the engine, and
its shutdown ends them with `ray.kill` without waiting. Once the engine's own processes have
exited, its workers may still hold their GPUs (and the memory on them) for a while. An
unload that returned then would let the next engine (a pipeline's next stage in swap mode,
a reload) start beside memory that is still in use. So a generator notes the group's free
GPUs before it loads (`free_now`) and, on unload, waits until as many are free again
(`await_free`): Ray gives a worker's GPUs back when its process has gone.
"""

from __future__ import annotations

import logging
import time
import typing as t

logger = logging.getLogger(__name__)

WAIT_S = 60.0
"""How long an unload waits for the engine's Ray workers to give their GPUs back."""
POLL_S = 0.05


class GroupGpus(t.NamedTuple):
    """The free GPUs of one placement group, as Ray counts them."""

    resource: str
    """Ray's name for the group's GPUs: `GPU_group_<group id>`."""
    free: float


def free_now() -> GroupGpus | None:
    """The GPUs free in the placement group of this Ray actor or task now; None outside a
    group, with no GPUs in it, or where Ray does not run in this process."""
    from rig_ray.generator.vllm_sizing import ray_running

    if not ray_running():
        return None
    import ray

    group = ray.util.get_current_placement_group()
    if group is None:
        return None
    resource = f"GPU_group_{group.id.hex()}"
    if resource not in ray.cluster_resources():  # a group with no GPU bundle
        return None
    return GroupGpus(resource, _available(resource))


def await_free(
    before: GroupGpus,
    *,
    wait_s: float = WAIT_S,
    poll_s: float = POLL_S,
    available: t.Callable[[str], float] | None = None,
) -> bool:
    """Wait until the group has `before.free` GPUs free again (at most `wait_s`); whether it
    did. A wait that runs out is logged, naming the GPUs still held."""
    read = available or _available
    deadline = time.monotonic() + wait_s
    while True:
        free = read(before.resource)
        if free >= before.free:
            return True
        if time.monotonic() >= deadline:
            logger.warning(
                "the engine's Ray workers still hold %g GPU(s) of their placement group %.0fs "
                "after it shut down; the next engine may find that memory in use",
                before.free - free,
                wait_s,
            )
            return False
        time.sleep(poll_s)


def _available(resource: str) -> float:
    import ray

    return float(ray.available_resources().get(resource, 0.0))  # Ray leaves out a zero
