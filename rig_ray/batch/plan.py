"""Which generation indices of a row each generator makes."""

from __future__ import annotations

import random

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
