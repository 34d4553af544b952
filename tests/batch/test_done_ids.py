"""The compact map of what an output folder holds (`rig_ray.batch.done_ids`), searched
against the rule written out row by row: whatever rows the parts hold (repeats, failures
after successes, indices past 62, rows no run makes), and with hashes made to collide."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rig_ray.batch import done_ids
from rig_ray.batch.done_ids import Masks, Scan

Row = tuple[str, int | None, bool]


def expected(rows: list[Row]) -> tuple[dict[str, int], dict[str, int], set[tuple[str, int]]]:
    """(done, failed, repeated) by the rule: a key (id, index >= 0) is done if any of its
    rows succeeded, else failed; it is repeated if it has more than one row."""
    seen: dict[tuple[str, int], bool] = {}
    repeated = set()
    for row_id, index, ok in rows:
        if index is None or index < 0:
            continue
        key = (row_id, index)
        if key in seen:
            repeated.add(key)
        seen[key] = seen.get(key, False) or ok
    done: dict[str, int] = {}
    failed: dict[str, int] = {}
    for (row_id, index), ok in seen.items():
        into = done if ok else failed
        into[row_id] = into.get(row_id, 0) | 1 << index
    return done, failed, repeated


ids = st.sampled_from(["a", "b", "c", "é", "", "a#1", "0", "00"])
rows = st.lists(
    st.tuples(ids, st.one_of(st.none(), st.integers(-2, 5), st.integers(60, 70)), st.booleans()),
    max_size=40,
)


def _scan(rows: list[Row], size: int = 7) -> Scan:
    """The scan of a folder whose rows are `rows`, in parts of up to `size` rows."""
    parts = [rows[start : start + size] for start in range(0, len(rows), size)]
    return Scan(
        pa.table(
            {
                "id": pa.array([r[0] for r in part], pa.string()),
                "generation_index": pa.array([r[1] for r in part], pa.int32()),
                "error": pa.array([None if r[2] else "boom" for r in part], pa.string()),
            }
        )
        for part in parts
    )


def _check(rows: list[Row]) -> None:
    done, failed, repeated = expected(rows)
    scan = _scan(rows)
    assert scan.done == done and scan.failed == failed and scan.repeated == repeated
    assert scan.failed_count() == sum(mask.bit_count() for mask in failed.values())
    assert scan.generations() == scan.failed_count() + sum(m.bit_count() for m in done.values())
    asked = ["a", "b", "c", "é", "", "a#1", "0", "00", "zz", "a"]
    assert scan.done.masks(asked) == [done.get(row_id, 0) for row_id in asked]
    merged = {i: done.get(i, 0) | failed.get(i, 0) for i in {*done, *failed}}
    assert scan.finished(retry_failed=False).masks(asked) == [merged.get(i, 0) for i in asked]
    assert scan.finished(retry_failed=True) == done
    assert bool(scan.done) == bool(done)
    for row_id, index, _ in rows:
        if index is not None and index >= 0:
            assert scan.is_done(row_id, index) == bool(done.get(row_id, 0) >> index & 1)


@settings(max_examples=200, deadline=None)
@given(rows=rows)
def test_the_scan_follows_the_rule(rows: list[Row]) -> None:
    _check(rows)


@settings(max_examples=100, deadline=None)
@given(rows=rows, buckets=st.integers(1, 3))
def test_ids_whose_hashes_collide_are_never_mixed_up(rows: list[Row], buckets: int) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(done_ids, "_hash", lambda row_id: len(row_id) % buckets)
        _check(rows)


def test_a_mapping_and_a_large_scan_look_up_alike() -> None:
    mapping = {f"row-{n}": n % 7 + 1 for n in range(200_000)}
    pairs = [(row_id, i) for row_id, mask in mapping.items() for i in range(3) if mask >> i & 1]
    scan = _scan([(row_id, index, True) for row_id, index in pairs], size=100_000)
    asked = [f"row-{n}" for n in range(0, 400_000, 3)]
    want = [mapping.get(row_id, 0) for row_id in asked]
    assert scan.done.masks(asked) == want == Masks.of_mapping(mapping).masks(asked)
    assert scan.done.get("row-5") == 6 and scan.done.get("nope") == 0


@settings(max_examples=50, deadline=None)
@given(first=rows, second=rows, buckets=st.integers(1, 3))
def test_maps_merged_keep_each_ids_bits_apart(
    first: list[Row], second: list[Row], buckets: int
) -> None:
    """Two scans' maps of done ids, merged: each id gets the bits it has in either, also
    where ids that were never in one scan share a hash."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(done_ids, "_hash", lambda row_id: len(row_id) % buckets)
        one, two = expected(first)[0], expected(second)[0]
        merged = Masks.merged(_scan(first).done, _scan(second).done)
        want = {i: one.get(i, 0) | two.get(i, 0) for i in {*one, *two}}
        assert merged == want
        asked = ["a", "b", "c", "é", "", "a#1", "0", "00", "zz"]
        assert merged.masks(asked) == [want.get(i, 0) for i in asked]
