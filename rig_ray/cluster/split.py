"""The pool's split rule: how many of `num_generations` each member makes."""

from __future__ import annotations

import random

from rig_ray.errors import InvalidPoolError
from rig_ray.generator.rounds import check_count


def generations_per_member(num_generations: int, members: int, rng: random.Random) -> list[int]:
    """Every member gets `num_generations // members`; `num_generations % members` members,
    drawn from `rng` at random without replacement, get one more.

    Only a remainder draws from `rng`, so a seeded `rng` gives the same sequence of splits.
    """
    count = check_count(num_generations)
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise InvalidPoolError(f"cannot split generations over {members!r} members")
    share, remainder = divmod(count, members)
    shares = [share] * members
    for index in rng.sample(range(members), remainder):
        shares[index] += 1
    return shares
