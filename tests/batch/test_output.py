"""The output folder: what is already done, writing Parquet parts whole, and reading them back."""

from __future__ import annotations

import types
import typing as t
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rig_ray.batch import output
from rig_ray.batch.output import OutputFolder, read_output
from rig_ray.batch.schema import OUTPUT_SCHEMA
from rig_ray.errors import BatchInputError


def generations(
    pairs: t.Sequence[tuple[str, int]], **passthrough: t.Sequence[t.Any] | pa.Array
) -> pa.Table:
    """An output table with one row per (id, generation_index), plus passthrough columns."""
    columns: dict[str, list[t.Any]] = {name: [None] * len(pairs) for name in OUTPUT_SCHEMA.names}
    columns["id"] = [row_id for row_id, _ in pairs]
    columns["generation_index"] = [index for _, index in pairs]
    columns["text"] = [f"text {row_id}/{index}" for row_id, index in pairs]
    table = pa.Table.from_pydict(columns, schema=OUTPUT_SCHEMA)
    for name, values in passthrough.items():
        table = table.append_column(name, pa.array(values))
    return table


def rows(count: int, start: int = 0) -> pa.Table:
    return generations([(f"r{i}", 0) for i in range(start, start + count)])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The time PartWriter sees, moved by hand (only in rig_ray.batch.output)."""
    fake = FakeClock()
    monkeypatch.setattr(output, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


def done(location: Path | str) -> set[tuple[str, int]]:
    """Every (id, generation_index) the folder holds a row for."""
    scan = OutputFolder(str(location)).scan()
    return {
        (row_id, index)
        for masks in (scan.done, scan.failed)
        for row_id, mask in masks.items()
        for index in range(mask.bit_length())
        if mask >> index & 1
    }


def _names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_a_missing_folder_has_no_parts_and_nothing_done(tmp_path: Path) -> None:
    folder = OutputFolder(str(tmp_path / "missing"))
    assert folder.parts() == []
    assert done(tmp_path / "missing") == set()
    assert not (tmp_path / "missing").exists()


def test_an_output_path_that_is_a_file_is_a_batch_input_error(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    path.write_bytes(b"x")
    with pytest.raises(BatchInputError, match="is a file") as caught:
        OutputFolder(str(path))
    assert caught.value.source == str(path)


def test_writer_creates_the_folder(tmp_path: Path) -> None:
    location = tmp_path / "a" / "b"
    OutputFolder(str(location)).writer(rows_per_part=10, seconds_per_part=60)
    assert location.is_dir()


def test_writer_flushes_once_rows_per_part_are_buffered(tmp_path: Path, clock: FakeClock) -> None:
    folder = OutputFolder(str(tmp_path))
    writer = folder.writer(rows_per_part=3, seconds_per_part=60)
    writer.add(rows(2))
    assert folder.parts() == [] and writer.written == []
    writer.add(rows(1, start=2))
    assert folder.parts() == writer.written
    assert len(writer.written) == 1
    assert pq.read_table(writer.written[0]).column("id").to_pylist() == ["r0", "r1", "r2"]


def test_writer_flushes_once_the_oldest_row_has_waited_long_enough(
    tmp_path: Path, clock: FakeClock
) -> None:
    folder = OutputFolder(str(tmp_path))
    writer = folder.writer(rows_per_part=1000, seconds_per_part=5)
    writer.add(rows(1))
    clock.now += 4.9
    writer.add(rows(1, start=1))
    assert writer.written == [] and not writer.overdue()
    clock.now += 0.1
    assert writer.overdue()
    writer.add(rows(1, start=2))
    assert len(writer.written) == 1
    assert pq.read_table(writer.written[0]).num_rows == 3
    assert not writer.overdue()


def test_the_wait_starts_again_after_a_flush(tmp_path: Path, clock: FakeClock) -> None:
    writer = OutputFolder(str(tmp_path)).writer(rows_per_part=1000, seconds_per_part=5)
    writer.add(rows(1))
    clock.now += 10
    writer.add(rows(1, start=1))
    assert len(writer.written) == 1
    clock.now += 1
    writer.add(rows(1, start=2))
    clock.now += 1
    writer.add(rows(1, start=3))
    assert len(writer.written) == 1


def test_writer_flushes_on_real_time_too(tmp_path: Path) -> None:
    import time

    writer = OutputFolder(str(tmp_path)).writer(rows_per_part=1000, seconds_per_part=0.02)
    writer.add(rows(1))
    time.sleep(0.05)
    writer.add(rows(1, start=1))
    assert len(writer.written) == 1


def test_empty_tables_are_not_buffered(tmp_path: Path) -> None:
    writer = OutputFolder(str(tmp_path)).writer(rows_per_part=1, seconds_per_part=0)
    writer.add(rows(0))
    writer.flush()
    assert writer.written == [] and not writer.overdue()


def test_flush_with_nothing_buffered_writes_nothing(tmp_path: Path) -> None:
    writer = OutputFolder(str(tmp_path)).writer(rows_per_part=10, seconds_per_part=60)
    writer.flush()
    assert writer.written == [] and _names(tmp_path) == []


def test_flush_leaves_no_temporary_files(tmp_path: Path) -> None:
    writer = OutputFolder(str(tmp_path)).writer(rows_per_part=2, seconds_per_part=60)
    for start in range(5):
        writer.add(rows(1, start=start))
    writer.flush()
    names = _names(tmp_path)
    assert len(names) == 3
    assert all(name.startswith("part-") and name.endswith(".parquet") for name in names)


def test_writer_removes_a_stray_temporary_file(tmp_path: Path) -> None:
    stray = tmp_path / ".tmp-part-dead-000000.parquet"
    stray.write_bytes(b"half a part")
    keep = tmp_path / ".keep"
    keep.write_text("")
    folder = OutputFolder(str(tmp_path))
    assert folder.parts() == []
    folder.writer(rows_per_part=10, seconds_per_part=60)
    assert not stray.exists()
    assert keep.exists()


def test_part_names_are_unique_per_run(tmp_path: Path) -> None:
    folder = OutputFolder(str(tmp_path))
    written: list[str] = []
    for _ in range(2):
        writer = folder.writer(rows_per_part=1, seconds_per_part=60)
        writer.add(rows(1))
        writer.add(rows(1, start=1))
        written += writer.written
    assert len(set(written)) == 4
    assert folder.parts() == sorted(written)


def test_scan_reads_every_part(tmp_path: Path) -> None:
    folder = OutputFolder(str(tmp_path))
    writer = folder.writer(rows_per_part=2, seconds_per_part=60)
    pairs = [("a", 0), ("a", 1), ("b", 0), ("c\x1fd", 2), ("7", 0)]
    for pair in pairs:
        writer.add(generations([pair]))
    writer.flush()
    assert len(folder.parts()) == 3
    assert done(tmp_path) == set(pairs)


def test_scan_and_read_output_take_only_parts(tmp_path: Path) -> None:
    pq.write_table(generations([("a", 0)]), tmp_path / "part-1.parquet")
    pq.write_table(generations([("b", 0)]), tmp_path / "_part-2.parquet")
    (tmp_path / ".tmp-part-3.parquet").write_bytes(b"garbage")
    (tmp_path / "notes.txt").write_text("garbage")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "from-another-tool.parquet")
    assert done(tmp_path) == {("a", 0)}
    assert read_output(str(tmp_path)).column("id").to_pylist() == ["a"]


def test_a_part_that_cannot_be_read_is_told_in_one_line(tmp_path: Path) -> None:
    pq.write_table(pa.table({"x": [1]}), tmp_path / "part-1.parquet")
    with pytest.raises(BatchInputError, match=r"part-1\.parquet") as caught:
        OutputFolder(str(tmp_path)).scan()
    assert len(str(caught.value).splitlines()) == 1  # not pyarrow's schema, line by line


def test_a_corrupt_part_is_a_batch_input_error_naming_it(tmp_path: Path) -> None:
    pq.write_table(generations([("a", 0)]), tmp_path / "part-good.parquet")
    (tmp_path / "part-x.parquet").write_bytes(b"this is not parquet at all")
    with pytest.raises(BatchInputError, match=r"part-x\.parquet") as caught:
        OutputFolder(str(tmp_path)).scan()
    assert caught.value.source == str(tmp_path)


def test_a_part_without_an_id_column_is_a_batch_input_error(tmp_path: Path) -> None:
    pq.write_table(pa.table({"other": [1]}), tmp_path / "part-y.parquet")
    with pytest.raises(BatchInputError, match=r"part-y\.parquet"):
        OutputFolder(str(tmp_path)).scan()


def test_read_output_concatenates_parts_in_order(tmp_path: Path) -> None:
    writer = OutputFolder(str(tmp_path)).writer(rows_per_part=2, seconds_per_part=60)
    for start in range(5):
        writer.add(rows(1, start=start))
    writer.flush()
    table = read_output(str(tmp_path))
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(5)]
    assert table.schema.names == OUTPUT_SCHEMA.names


def test_read_output_reads_only_the_columns_asked_for(tmp_path: Path) -> None:
    pq.write_table(generations([("a", 0)], topic=["x"]), tmp_path / "part-1.parquet")
    table = read_output(str(tmp_path), columns=["id", "topic"])
    assert table.to_pylist() == [{"id": "a", "topic": "x"}]


def test_read_output_promotes_an_all_null_passthrough_column_to_string(tmp_path: Path) -> None:
    nulls = generations([("a", 0)], topic=pa.nulls(1))
    texts = generations([("b", 0)], topic=pa.array(["space"]))
    assert nulls.schema.field("topic").type == pa.null()
    pq.write_table(nulls, tmp_path / "part-1.parquet")
    pq.write_table(texts, tmp_path / "part-2.parquet")
    table = read_output(str(tmp_path))
    assert table.schema.field("topic").type == pa.string()
    assert table.column("topic").to_pylist() == [None, "space"]


def test_a_part_mixes_buffered_tables_whose_passthrough_types_differ(tmp_path: Path) -> None:
    writer = OutputFolder(str(tmp_path)).writer(rows_per_part=2, seconds_per_part=60)
    writer.add(generations([("a", 0)], topic=pa.nulls(1)))
    writer.add(generations([("b", 0)], topic=pa.array(["space"])))
    (part,) = writer.written
    assert pq.read_table(part).column("topic").to_pylist() == [None, "space"]


def test_read_output_of_an_empty_folder_is_a_batch_input_error(tmp_path: Path) -> None:
    with pytest.raises(BatchInputError, match="no output parts") as caught:
        read_output(str(tmp_path))
    assert caught.value.source == str(tmp_path)


def test_a_file_uri_output_folder_works_like_a_path(tmp_path: Path) -> None:
    writer = OutputFolder(tmp_path.as_uri()).writer(rows_per_part=1, seconds_per_part=60)
    writer.add(rows(1))
    assert done(tmp_path) == {("r0", 0)}
    assert read_output(tmp_path.as_uri()).num_rows == 1


def _with_errors(pairs: t.Sequence[tuple[str, int]], errors: t.Sequence[str | None]) -> pa.Table:
    table = generations(pairs)
    index = table.schema.get_field_index("error")
    return table.set_column(index, "error", pa.array(errors, type=pa.string()))


def test_scan_tells_done_from_failed(tmp_path: Path) -> None:
    pq.write_table(
        _with_errors([("a", 0), ("a", 1), ("b", 0)], [None, "boom", "boom"]),
        tmp_path / "part-1.parquet",
    )
    scan = OutputFolder(str(tmp_path)).scan()
    assert scan.done == {"a": 0b01} and scan.failed == {"a": 0b10, "b": 0b01}
    assert scan.failed_count() == 2 and not scan.repeated
    assert scan.finished(retry_failed=False) == {"a": 0b11, "b": 0b01}
    assert scan.finished(retry_failed=True) == {"a": 0b01}


def test_compact_keeps_one_row_per_generation(tmp_path: Path) -> None:
    # an earlier run failed a0 and b0; a retry made a0 well and b0 failed again, then stopped
    pq.write_table(
        _with_errors([("a", 0), ("b", 0), ("c", 0)], ["old", "old", None]),
        tmp_path / "part-1.parquet",
    )
    pq.write_table(_with_errors([("b", 0)], ["new"]), tmp_path / "part-2.parquet")
    pq.write_table(_with_errors([("a", 0)], [None]), tmp_path / "part-3.parquet")
    folder = OutputFolder(str(tmp_path))
    assert folder.scan().repeated == {("a", 0), ("b", 0)}
    assert folder.compact() == 2
    got = {
        (r["id"], r["generation_index"]): r["error"] for r in read_output(str(tmp_path)).to_pylist()
    }
    assert got == {("a", 0): None, ("b", 0): "new", ("c", 0): None}
    assert not folder.scan().repeated
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
    assert folder.compact() == 0


def test_compact_removes_a_part_it_empties(tmp_path: Path) -> None:
    pq.write_table(_with_errors([("a", 0)], ["old"]), tmp_path / "part-1.parquet")
    pq.write_table(_with_errors([("a", 0)], [None]), tmp_path / "part-2.parquet")
    folder = OutputFolder(str(tmp_path))
    folder.compact()
    assert [Path(p).name for p in folder.parts()] == ["part-2.parquet"]
