"""The Ray that a rig_ray command starts for itself on this machine.

Ray starts its workers at niceness 15: the actors that hold the engines, and so the engines'
own processes, would give the CPU to anything else on the machine before running, while
`vllm serve` and `vllm run-batch` run theirs at the niceness they were started with. On a Ray
of its own, a rig_ray command starts its workers at its own niceness (an increment of 0), so
its engines get the CPU that those commands' engines would. A `RAY_worker_niceness` in the
environment still decides. A Ray that was already running keeps its own setting. The same
holds where `rr.remote()` starts a Ray, as `ray.init()` would (`init_as_ray_does`).
"""

from __future__ import annotations

import logging
import os
import typing as t

WORKER_NICENESS = 0
"""Added to the command's niceness for Ray's workers (Ray's own default: 15)."""
_ENV = "RAY_worker_niceness"


def start_local_ray(**init_args: t.Any) -> None:
    """`ray.init(address="local", **init_args)`, with Ray's workers at this command's niceness
    unless the environment sets `RAY_worker_niceness`."""
    import ray

    config = None if _ENV in os.environ else {"worker_niceness": WORKER_NICENESS}
    ray.init(address="local", _system_config=config, **init_args)


def quiet_ray_logs() -> None:
    """Keep Ray's notices for newcomers (that a Ray it starts uses token authentication, Ray
    Data's execution notes) out of a command's console; errors still show."""
    for name in ("ray._private.authentication", "ray.data._internal.execution"):
        logging.getLogger(name).setLevel(logging.ERROR)


def init_as_ray_does() -> None:
    """What `ray.init()` does with no arguments (join the cluster of `RAY_ADDRESS`, or the one
    `ray start` left running on this machine, else start one), the Ray it starts having its
    workers at this command's niceness, as `start_local_ray`'s."""
    import ray

    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # another Ray: its own way
        ray.init()
        return
    if canonicalize_bootstrap_address(None) is None:  # type: ignore[arg-type]  # none to join
        start_local_ray()
    else:
        ray.init()


__all__: t.Sequence[str] = [
    "WORKER_NICENESS",
    "init_as_ray_does",
    "quiet_ray_logs",
    "start_local_ray",
]
