"""Which generation indices of a row each generator makes.

The indices of a row are dealt out in rounds of one index per generator: round `r` holds the
indices `r*m .. r*m + m-1` (for `m` generators) and hands them to the generators in an order
drawn from `seed`, the row id and `r`. A row with `n` generations therefore gives every
generator `n // m` of them and `n % m` generators, drawn at random without replacement, one
more: the pool's divide/remainder rule (`generations_per_member`). Raising `n` only adds
indices, so the generator of every index below the old `n` stays what it was, and the counts
for the new `n` again follow the rule.
"""

from __future__ import annotations

import random

from rig_ray.cluster.split import generations_per_member


def member_indices(
    row_id: str, num_generations: int, members: int, seed: int | None
) -> list[list[int]]:
    """The generation indices of one row that each of `members` generators makes.

    Every run, on every worker, gives the same indices to the same generator for the same
    row; and the answer for a smaller `num_generations` is this one with the higher indices
    left out.
    """
    if members == 1:
        return [list(range(num_generations))]
    generations_per_member(num_generations, members, random.Random(0))  # the same checks
    owned: list[list[int]] = [[] for _ in range(members)]
    for start in range(0, num_generations, members):
        rng = random.Random(f"{seed}\x1f{row_id}\x1f{start // members}")
        order = rng.sample(range(members), members)
        for offset, member in enumerate(order[: num_generations - start]):
            owned[member].append(start + offset)
    return owned
