"""Which generation indices of a row each generator makes, and which are already done."""

from __future__ import annotations

import random
import typing as t

from rig_ray.cluster.split import generations_per_member


def member_indices(
    row_id: str, num_generations: int, members: int, seed: int | None
) -> list[range]:
    """The generation indices of one row that each of `members` generators makes.

    Shares follow the pool's divide/remainder rule (`generations_per_member`), drawn from a
    random generator seeded with `seed` and the row id, so every run, on every worker, draws
    the same split for the same row. Member 0 makes the first indices, member 1 the next, ...
    """
    if members == 1:
        return [range(num_generations)]
    rng = random.Random(f"{seed}\x1f{row_id}")
    shares = generations_per_member(num_generations, members, rng)
    ranges, start = [], 0
    for share in shares:
        ranges.append(range(start, start + share))
        start += share
    return ranges


def done_key(row_id: str, generation_index: int) -> str:
    """How an (id, generation_index) pair already in the output is remembered."""
    return f"{generation_index}\x1f{row_id}"


def pending_generations(
    row_ids: t.Iterable[str],
    num_generations: int,
    members: int,
    seed: int | None,
    done: t.Container[str],
) -> int:
    """How many generations of these rows are not `done` yet, over all members."""
    pending = 0
    for row_id in row_ids:
        for indices in member_indices(row_id, num_generations, members, seed):
            pending += sum(done_key(row_id, g) not in done for g in indices)
    return pending
