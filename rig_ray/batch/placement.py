"""Where a batch job runs: which Ray to join, and whether its actors fit there.

`join` picks a cluster as `rig-ray serve` does: `address=`, else `RAY_ADDRESS`, else a local
Ray of the job's own; a cluster that does not answer within `JOIN_TIMEOUT_S` is a one-line
`BatchInputError` naming the address. `fit_cpus` compares what the actor pools ask for with
what the cluster has before anything is scheduled. `size_engines_ahead` starts looking up
the engines' sizes while Ray starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import typing as t

from rig_ray.cluster.local_ray import start_local_ray
from rig_ray.errors import BatchInputError, RigRayError
from rig_ray.redaction import redact

if t.TYPE_CHECKING:
    from rig_ray.generator.base import Generator

JOIN_TIMEOUT_S = 60.0
DEFAULT_NUM_CPUS = 1.0
"""CPUs per actor when the user leaves it open and the cluster has them."""


def join(address: str | None) -> bool:
    """Start or join Ray unless it is running; True when this call started a Ray of its own.

    The caller's SIGTERM handler stays in place (Ray's own prints C++ stack traces).
    """
    import ray

    if ray.is_initialized():
        return False
    chosen = address or os.environ.get("RAY_ADDRESS") or "local"
    handler = signal.getsignal(signal.SIGTERM)
    try:
        if chosen == "local":
            start_local_ray(include_dashboard=False, logging_level=logging.WARNING)
            return True
        _connect(chosen)
        return False
    finally:
        if threading.current_thread() is threading.main_thread() and handler is not None:
            signal.signal(signal.SIGTERM, handler)


def size_engines_ahead(members: t.Sequence[Generator], num_gpus: float | None) -> None:
    """Start looking up vLLM's sizes for the members' engines in the background, while Ray
    starts and the input is read: the job's plan asks for them next, and a lookup imports
    vLLM in a child process or a Ray task (seconds; see `vllm_sizing.prefetch`)."""
    from rig_ray.cluster.placement import place
    from rig_ray.generator import vllm_sizing

    try:
        placements = [place(member, num_gpus=num_gpus) for member in members]
    except RigRayError:  # the job refuses these where it places its actors, in its own words
        return
    vllm_sizing.prefetch(members, placements)


def _connect(address: str) -> None:
    import ray

    _probe(address)
    logging.getLogger("ray._private.worker").addFilter(_NoThreadNotice())
    started = time.monotonic()
    try:
        with _time_limit(JOIN_TIMEOUT_S):
            ray.init(address=address, logging_level=logging.WARNING)
    except _JoinTimeout:
        if ray.is_initialized():
            ray.shutdown()
        # The timer cannot cut Ray's own connect waits short (in C++, up to about 40 s by
        # default; RAY_py_gcs_connect_timeout_s bounds them): say how long it really took.
        waited = max(JOIN_TIMEOUT_S, time.monotonic() - started)
        raise BatchInputError(
            f"the Ray cluster at {redact(address)!r} did not answer within {waited:.0f}s; "
            "check --address / RAY_ADDRESS, or leave both unset for a local Ray"
        ) from None
    except Exception as error:
        first = (str(error).strip().splitlines() or [""])[0]
        raise BatchInputError(
            f"cannot join the Ray cluster at {redact(address)!r}: {redact(first)}"
        ) from error


class _JoinTimeout(BaseException):
    """Raised into `ray.init` by the join's timer (a BaseException: Ray must not catch it)."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> t.Iterator[None]:
    """Interrupt the body after `seconds` with `_JoinTimeout`: on the main thread by a timer
    signal, so nothing is left running behind; elsewhere (no signals there) not at all."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: t.Any) -> None:
        raise _JoinTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _NoThreadNotice(logging.Filter):
    """Drops Ray's notice that a Ray joined from a thread sets no SIGTERM handler: the job's
    own handler stays in place, as wanted."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def _probe(address: str) -> None:
    """Fail at once when nothing listens at a `host:port` address (a head that has gone)."""
    if "://" in address or address == "auto":
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as error:
        raise BatchInputError(
            f"cannot reach the Ray cluster at {address!r}: {error.strerror or error}; check "
            "--address / RAY_ADDRESS, or leave both unset for a local Ray"
        ) from None


def fixed_cluster() -> bool:
    """Whether the cluster cannot grow: a local Ray this process started."""
    try:
        from ray._private import worker

        node = worker.global_worker.node
        return bool(node is not None and node.head)
    except (AttributeError, ImportError):
        return False


def gpus_per_actor(members: t.Sequence[Generator], num_gpus: float | None) -> float:
    """The most GPUs an actor of one of `members` takes (by `rig_ray.cluster.placement`); on
    a cluster that cannot grow, an engine whose GPUs no node holds is a PlacementError."""
    return max(_member_gpus(members, num_gpus))


def gpus_in_all(members: t.Sequence[Generator], num_gpus: float | None, replicas: int) -> float:
    """The GPUs the job's actors take together: each generator's (engines of several sizes
    add up as they are), times its replicas; refused as `gpus_per_actor` refuses."""
    return replicas * sum(_member_gpus(members, num_gpus))


def _member_gpus(members: t.Sequence[Generator], num_gpus: float | None) -> list[float]:
    from rig_ray.cluster.placement import place, refuse_what_no_node_holds

    placements = [place(member, num_gpus=num_gpus) for member in members]
    for placement in placements:
        refuse_what_no_node_holds(placement)
    return [placement.total_gpus for placement in placements]


def fit_cpus(num_cpus: float | None, num_gpus: float, actors: int) -> tuple[float, str | None]:
    """CPUs per actor, and a note for the progress line when the job must wait for resources;
    `num_gpus` is what the `actors` take in all (`gpus_in_all`).

    One CPU (half of a one-CPU cluster) stays free for Ray Data's own tasks. On a fixed
    cluster, `num_cpus=None` shrinks to fit and an explicit request that cannot fit is a
    `BatchInputError` with the numbers; on a cluster that can grow, the job waits, and the
    note says for what.
    """
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    reserve = _data_reserve(cpus)
    wanted = DEFAULT_NUM_CPUS if num_cpus is None else num_cpus
    fixed = fixed_cluster()
    if num_cpus is None and fixed and actors * wanted + reserve > cpus:
        wanted = round(max(cpus - reserve, 0.0) / actors, 3)
    short = actors * wanted + reserve > cpus + 1e-9 or num_gpus > gpus + 1e-9
    if not short:
        return wanted, None
    need = f"{actors} actor(s) needing {wanted:g} CPU each" + (
        f" and {num_gpus:g} GPU(s) in all" if num_gpus else ""
    )
    have = f"{cpus:g} CPUs and {gpus:g} GPUs, {reserve:g} CPU kept for Ray Data's tasks"
    if fixed:
        raise BatchInputError(
            f"the job cannot be placed: {need}, but this Ray has {have}; lower --num-cpus, "
            "--num-gpus or --replicas, or give fewer generators"
        )
    return wanted, f"waiting for {need} (the cluster has {have} now)"


def data_task_cpus(data_cpus: float | None) -> float | None:
    """The CPUs each of the job's Ray Data tasks asks: `data_cpus` where given; else Ray
    Data's own one, or, on a cluster of under two CPUs, what `fit_cpus` keeps free for them
    (a task asking a whole CPU there would wait beside the actors forever)."""
    import ray

    if data_cpus is not None:
        return data_cpus
    reserve = _data_reserve(float(ray.cluster_resources().get("CPU", 0)))
    return None if reserve >= 1.0 else reserve


def _data_reserve(cpus: float) -> float:
    """The CPUs kept free of actors for Ray Data's tasks: one, or half of a smaller cluster."""
    return min(1.0, cpus / 2)


__all__: t.Sequence[str] = [
    "JOIN_TIMEOUT_S",
    "data_task_cpus",
    "fit_cpus",
    "fixed_cluster",
    "gpus_in_all",
    "gpus_per_actor",
    "join",
    "size_engines_ahead",
]
