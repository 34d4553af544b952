"""`OutputFolder.merge`: small parts rewritten as few, in order, whole before the parts they
replace go; a merge killed in between is undone by `compact`; large parts stay as they are."""

from __future__ import annotations

import shutil
import tempfile
import typing as t
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rig_ray.batch.lock import FolderLock
from rig_ray.batch.output import Merged, OutputFolder, read_output
from rig_ray.batch.pipeline_stream import merge_parts
from rig_ray.errors import FolderLockLostError
from tests.batch.test_output import _with_errors, generations


def parts_of(folder: Path, sizes: t.Sequence[int], failed: t.Sequence[str] = ()) -> list[Path]:
    """Parts of `sizes` rows each (ids r0, r1, ...; those in `failed` with an error), in
    name order, with a passthrough column that is all-null in some parts."""
    written, start = [], 0
    for number, size in enumerate(sizes):
        pairs = [(f"r{i}", 0) for i in range(start, start + size)]
        table = _with_errors(pairs, ["boom" if p[0] in failed else None for p in pairs])
        topic = pa.nulls(size) if number % 2 else pa.array([f"t{i}" for i in range(size)])
        path = folder / f"part-{number:03d}.parquet"
        pq.write_table(table.append_column("topic", topic), path)
        written.append(path)
        start += size
    return written


def rows_of(folder: Path) -> list[dict[str, t.Any]]:
    return read_output(str(folder)).to_pylist()


def names(folder: Path) -> list[str]:
    return [Path(p).name for p in OutputFolder(str(folder)).parts()]


def test_small_parts_merge_in_order_into_parts_of_up_to_rows_per_part(tmp_path: Path) -> None:
    parts_of(tmp_path, [1, 1, 1, 1, 1, 1, 1], failed=["r2"])
    before = rows_of(tmp_path)
    merged = OutputFolder(str(tmp_path)).merge(rows_per_part=3)
    assert merged == Merged(parts=6, into=2)  # 3 + 3, and the seventh alone
    assert names(tmp_path) == ["part-000.parquet", "part-003.parquet", "part-006.parquet"]
    assert [pq.read_metadata(tmp_path / n).num_rows for n in names(tmp_path)] == [3, 3, 1]
    assert rows_of(tmp_path) == before  # the same rows, in the same order, errors kept
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert OutputFolder(str(tmp_path)).merge(rows_per_part=3) == Merged(0, 0)


def test_large_parts_stay_and_nothing_is_rewritten_that_would_not_shrink(tmp_path: Path) -> None:
    paths = parts_of(tmp_path, [5, 1, 5])  # 5 + 1 and 1 + 5 are over 5: no run to merge
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert OutputFolder(str(tmp_path)).merge(rows_per_part=5) == Merged(0, 0)
    assert [p.stat().st_mtime_ns for p in paths] == stamps
    paths.append(tmp_path / "part-003.parquet")
    pq.write_table(generations([("r11", 0)]), paths[-1])
    paths.append(tmp_path / "part-004.parquet")
    pq.write_table(generations([("r12", 0)]), paths[-1])
    assert OutputFolder(str(tmp_path)).merge(rows_per_part=5) == Merged(2, 1)  # the last two
    assert names(tmp_path) == [f"part-{n:03d}.parquet" for n in range(4)]
    assert [p.stat().st_mtime_ns for p in paths[:3]] == stamps  # the others were not touched
    assert [r["id"] for r in rows_of(tmp_path)] == [f"r{i}" for i in range(13)]


def killed_merge(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A merge killed after writing its first merged part, before deleting what it replaces."""

    def killed(self: OutputFolder, part: str) -> None:
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patched:
        patched.setattr(OutputFolder, "_delete", killed)
        with pytest.raises(KeyboardInterrupt):
            OutputFolder(str(folder)).merge(rows_per_part=10)


def once_each(folder: Path, count: int) -> list[dict[str, t.Any]]:
    rows = sorted(rows_of(folder), key=lambda row: int(row["id"][1:]))
    assert [row["id"] for row in rows] == [f"r{i}" for i in range(count)]
    return rows


def test_a_merge_killed_before_deleting_is_undone_by_compact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = tmp_path / "stage"
    stage.mkdir()
    parts_of(stage, [2, 1, 2], failed=["r1", "r3"])
    before = once_each(stage, 5)
    killed_merge(stage, monkeypatch)
    assert len(rows_of(stage)) == 8  # parts 1 and 2 are in the merged part too
    assert OutputFolder(str(stage)).scan().repeated == {("r2", 0), ("r3", 0), ("r4", 0)}
    again = tmp_path / "again"
    shutil.copytree(stage, again)
    # a resume (`batch.run`): scan, then compact what is repeated
    folder = OutputFolder(str(stage))
    scan = folder.scan()
    assert folder.compact(scan) == 3
    assert once_each(stage, 5) == before and not folder.scan().repeated
    # or a merge again (a stage complete already): it compacts first, then merges
    assert OutputFolder(str(again)).merge(rows_per_part=10) == Merged(2, 1)
    assert once_each(again, 5) == before
    assert names(again) == ["part-000.parquet"]


def test_each_merged_part_is_checked_first_and_a_held_folder_is_left_alone(
    tmp_path: Path,
) -> None:
    parts_of(tmp_path, [1, 1, 1])
    before = sorted(p.name for p in tmp_path.iterdir())

    def lost() -> None:
        raise FolderLockLostError("lost", location=str(tmp_path))

    with pytest.raises(FolderLockLostError):
        OutputFolder(str(tmp_path)).merge(rows_per_part=10, before_part=lost)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    folder = OutputFolder(str(tmp_path))
    with FolderLock(folder.filesystem, folder.path, str(tmp_path)):
        reason = merge_parts(str(tmp_path), rows_per_part=10)
    assert isinstance(reason, str) and "in use by another run" in reason
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".parquet") == before
    assert merge_parts(str(tmp_path), rows_per_part=10) == Merged(3, 1)
    assert not (tmp_path / "_rig_ray.lock").exists()  # the lock went with the merge


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=10),
    rows_per_part=st.integers(1, 15),
)
def test_any_merge_keeps_the_rows_in_order_and_only_shrinks(
    sizes: list[int], rows_per_part: int
) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        parts_of(folder, sizes, failed=["r0", "r5"])
        before, names_before = rows_of(folder), names(folder)
        merged = OutputFolder(name).merge(rows_per_part=rows_per_part)
        after = names(folder)
        assert rows_of(folder) == before
        assert len(after) == len(names_before) - merged.parts + merged.into
        assert set(after) <= set(names_before)  # each merged part has its run's first name
        counts = [pq.read_metadata(folder / n).num_rows for n in after]
        large = [size for size in sizes if size > rows_per_part]  # only those stay larger
        assert sorted(c for c in counts if c > rows_per_part) == sorted(large)
        assert OutputFolder(name).merge(rows_per_part=rows_per_part) == Merged(0, 0)
