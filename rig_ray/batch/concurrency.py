"""How much a batch actor keeps in flight: enough to fill its engine.

An engine that batches continuously (vLLM's) runs up to `max_num_seqs` requests at once. A
batch actor fills it when it keeps about 1.1 x that many requests in flight (Ray Data LLM's
rule) and sends rows one request at a time, so that a row still generating holds only its
own slot, not its whole batch's. The driver reads `max_num_seqs` from vLLM's own default table
as the actors' engines will (on a node with their GPUs, see `vllm_sizing.engine_table`; no
engine is loaded); each actor then sizes its row slots from its loaded engine. Engines that
batch per call (transformers) keep one call per batch of rows. A member whose engine lives
in an actor of its own (a pipeline stage's engines, `rr.remote()`) and batches continuously
is asked for its engine's `max_num_seqs`, and gets as many batches as a vLLM generator would,
each batch one call to that actor.
"""

from __future__ import annotations

import logging
import math
import typing as t

from rig_ray.cluster.remote_generator import RemoteGenerator
from rig_ray.generator import vllm_sizing
from rig_ray.generator.base import Generator

if t.TYPE_CHECKING:
    from rig_ray.cluster.placement import Placement

logger = logging.getLogger("rig_ray.batch")

DEFAULT_BATCH_SIZE = 64
"""Rows per engine call: enough for vLLM's and transformers' batching to pay off."""
DEFAULT_MAX_CONCURRENT_BATCHES = 4
"""Engine calls in flight per actor, for engines that do not batch continuously."""


class Concurrency(t.NamedTuple):
    """How one generator's actors take their rows."""

    batch_size: int
    """Rows per batch Ray Data hands an actor."""
    max_concurrent_batches: int
    """Batches an actor takes at once."""
    row_requests: int | None
    """Engine requests in flight per actor, rows going one request at a time; None: one
    engine call per batch."""


def plan(
    members: t.Sequence[Generator],
    batch_size: int | None,
    max_concurrent_batches: int | None,
    placements: t.Sequence[Placement | None] | None = None,
    num_generations: int = 1,
) -> list[Concurrency]:
    """Each member's concurrency, its engine sized where `placements` (one per member) run
    it. Left unset, an engine that batches continuously gets twice the batches that reach
    1.1 x its max_num_seqs (so a batch kept open by its slowest rows leaves the engine enough
    to refill from); an explicit setting that cannot hold max_num_seqs rows gets one warning
    for the whole job. Every member's actors see every row but make only their share of its
    `num_generations`: where that share is under one request a row, they take that many more
    rows to keep their engine as full."""
    size = batch_size or DEFAULT_BATCH_SIZE
    share = min(1.0, num_generations / max(len(members), 1))  # requests a row, per member
    plans: list[Concurrency] = []
    short: list[str] = []
    where = list(placements) if placements is not None else [None] * len(members)
    for member, placement in zip(members, where, strict=True):
        seqs = _max_num_seqs(member, placement)
        if seqs is None:
            concurrent = max_concurrent_batches or DEFAULT_MAX_CONCURRENT_BATCHES
            plans.append(Concurrency(size, concurrent, None))
            continue
        target = vllm_sizing.in_flight(seqs)
        concurrent = max_concurrent_batches or max(
            DEFAULT_MAX_CONCURRENT_BATCHES, 2 * math.ceil(target / (size * share))
        )
        if size * concurrent < seqs:
            short.append(f"{member.model} runs {seqs} sequences at once")
        remote = isinstance(member, RemoteGenerator)  # one actor call per batch, not per row
        plans.append(Concurrency(size, concurrent, None if remote else target))
    if short:
        logger.warning(
            "batch_size x max_concurrent_batches = %d x %d rows per actor cannot fill the "
            "engine (%s); leave both unset to size them from the engine, or raise them",
            size,
            max_concurrent_batches,
            "; ".join(short),
        )
    return plans


def _max_num_seqs(member: Generator, placement: Placement | None) -> int | None:
    """The sequences the member's engine runs at once where it batches continuously, else
    None: a vLLM generator's from vLLM's table where `placement` runs it; an actor's (a
    pipeline stage's engines, `rr.remote()`) from the actor, whose engine is loaded or sized
    where it runs."""
    if isinstance(member, RemoteGenerator):
        return member.engine_capacity() if member.inner.batches_continuously else None
    if not member.batches_continuously:
        return None
    return vllm_sizing.max_num_seqs_for(member, vllm_sizing.OFFLINE, placement)


__all__: t.Sequence[str] = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_CONCURRENT_BATCHES",
    "Concurrency",
    "plan",
]
