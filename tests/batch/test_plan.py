"""member_indices: who makes which generation of a row."""

from __future__ import annotations

import pytest

from rig_ray.batch.plan import member_indices

IDS = [f"row-{i}" for i in range(1000)]


@pytest.mark.parametrize("num_generations", [1, 2, 7])
@pytest.mark.parametrize("seed", [None, 0, 3])
def test_one_member_makes_every_generation(num_generations: int, seed: int | None) -> None:
    assert member_indices("r", num_generations, 1, seed) == [list(range(num_generations))]


@pytest.mark.parametrize(
    ("num_generations", "members"),
    [(n, m) for n in range(1, 11) for m in range(2, 5)],
)
def test_each_index_has_one_member(num_generations: int, members: int) -> None:
    for row_id in IDS[:20]:
        owned = member_indices(row_id, num_generations, members, seed=0)
        assert len(owned) == members
        assert sorted(i for indices in owned for i in indices) == list(range(num_generations))


@pytest.mark.parametrize(
    ("before", "after", "members"), [(2, 4, 2), (1, 5, 3), (3, 7, 2), (4, 9, 4)]
)
def test_raising_num_generations_keeps_every_member_and_follows_the_rule(
    before: int, after: int, members: int
) -> None:
    share, remainder = divmod(after, members)
    for row_id in IDS[:50]:
        old = member_indices(row_id, before, members, seed=3)
        new = member_indices(row_id, after, members, seed=3)
        assert [[i for i in indices if i < before] for indices in new] == old
        assert sorted(len(i) for i in new) == [share] * (members - remainder) + [share + 1] * (
            remainder
        )


@pytest.mark.parametrize(
    ("num_generations", "members"),
    [(n, m) for n in range(1, 11) for m in range(2, 5)],
)
def test_shares_follow_the_divide_and_remainder_rule(num_generations: int, members: int) -> None:
    share, remainder = divmod(num_generations, members)
    for row_id in IDS[:20]:
        shares = [len(r) for r in member_indices(row_id, num_generations, members, seed=1)]
        assert max(shares) - min(shares) <= 1
        assert sorted(shares) == [share] * (members - remainder) + [share + 1] * remainder


def test_the_same_seed_and_row_id_give_the_same_split_on_every_call() -> None:
    for row_id in IDS[:50]:
        first = member_indices(row_id, 5, 3, seed=11)
        assert all(member_indices(row_id, 5, 3, seed=11) == first for _ in range(3))


def test_the_split_is_pinned_across_processes_and_versions() -> None:
    # Seeded from a str, so hash randomisation (PYTHONHASHSEED) must not change it.
    assert member_indices("row-1", 3, 2, 0) == [[0, 2], [1]]
    assert member_indices("row-2", 5, 3, 7) == [[2, 3], [1, 4], [0]]
    assert member_indices("row-1", 5, 3, 7) == [[1, 4], [2, 3], [0]]


@pytest.mark.parametrize("seed", [None, 0, 1])
def test_both_members_get_the_extra_generation_for_a_fair_share_of_ids(seed: int | None) -> None:
    first_gets_two = sum(len(member_indices(row_id, 3, 2, seed)[0]) == 2 for row_id in IDS)
    # Binomial(1000, 1/2): 400..600 is more than 6 standard deviations either side.
    assert 400 <= first_gets_two <= 600


def test_each_of_three_members_gets_the_extra_generation_about_a_third_of_the_time() -> None:
    counts = [0, 0, 0]
    for row_id in IDS:
        shares = [len(r) for r in member_indices(row_id, 4, 3, seed=5)]
        counts[shares.index(2)] += 1
    expected = len(IDS) / 3
    chi_square = sum((count - expected) ** 2 / expected for count in counts)
    assert chi_square < 13.8  # the 0.1% point of chi-square with 2 degrees of freedom


def test_a_different_seed_changes_some_splits_but_not_all() -> None:
    changed = sum(
        member_indices(row_id, 3, 2, seed=0) != member_indices(row_id, 3, 2, seed=1)
        for row_id in IDS[:200]
    )
    # two rounds, each kept with chance 1/2 (the second holds one index): 3/4 change
    assert 120 <= changed <= 180


def test_seed_none_and_seed_zero_are_different_seeds() -> None:
    changed = sum(
        member_indices(row_id, 3, 2, seed=None) != member_indices(row_id, 3, 2, seed=0)
        for row_id in IDS[:200]
    )
    assert changed > 0
