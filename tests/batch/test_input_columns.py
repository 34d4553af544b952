"""The columns a job checks its template against are read without stopping a Ray run early.

`Dataset.columns()` runs a read until its first block, then shuts the run down by force,
killing the read tasks still running; a killed task whose reply lands at that moment fails a
check in Ray's driver (2.60: `Tried to complete task that was not pending`), and the
process ends at once. A job must never do that to its driver, so no run of one shuts down
by force, and the columns come from the files (or from what Ray already knows).
"""

from __future__ import annotations

import csv
import gc
import gzip
import json
import logging
import typing as t
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rig_ray.batch import read_output
from rig_ray.batch.data_tasks import dataset_columns, from_blocks, put_block
from rig_ray.batch.json_values import ROWS_PER_BLOCK
from rig_ray.batch.run import pending
from rig_ray.batch.source import input_columns, read_prompts
from rig_ray.errors import BatchInputError
from tests.batch.test_input_schema import echo_run
from tests.fakes import EchoGenerator

pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture
def shutdowns(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The `force` of every shutdown of a Ray Data run in this process, for one test."""
    from ray.data._internal.execution.streaming_executor import StreamingExecutor

    gc.collect()  # an earlier test's run, shut down when it is collected, is not this test's
    seen: list[bool] = []
    shutdown = StreamingExecutor.shutdown

    def spy(self: t.Any, force: bool, *args: t.Any, **kwargs: t.Any) -> t.Any:
        seen.append(force)
        return shutdown(self, force, *args, **kwargs)

    monkeypatch.setattr(StreamingExecutor, "shutdown", spy)
    return seen


def _jsonl(path: Path, rows: list[dict[str, t.Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _columns(source: Path) -> tuple[str, ...]:
    return input_columns(read_prompts(str(source)), str(source))


def test_json_columns_are_the_keys_of_the_first_rows_of_the_first_file_that_has_any(
    tmp_path: Path, shutdowns: list[bool], caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text("\n\n")  # no rows
    _jsonl(folder / "b.jsonl", [{}, {"id": "1", "topic": "x"}, {"topic": "y", "extra": 2}])
    _jsonl(folder / "c.jsonl", [{"other": 1}])
    assert _columns(folder) == ("id", "topic", "extra")
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"b": 1}, {"a": 2}]))
    assert _columns(array) == ("b", "a")
    packed = tmp_path / "in.jsonl.gz"
    packed.write_bytes(gzip.compress(b'\xef\xbb\xbf{"q": 1}\r\n'))
    assert _columns(packed) == ("q",)
    late = [{"n": n} for n in range(ROWS_PER_BLOCK)] + [{"n": 0, "late": 1}]
    late_file = _jsonl(tmp_path / "late.jsonl", late)
    assert _columns(late_file) == ("n",)  # the first block's
    # a column asked for that the first block lacks: unconfirmed, for the first pass to check
    # (and said at once: a misspelt one is refused only once every row is read)
    assert input_columns(read_prompts(str(late_file)), str(late_file), wanted=["late"]) == (
        "n",
        "late",
    )
    [told] = [r.getMessage() for r in caplog.records if r.name == "rig_ray.batch.source"]
    assert "'late' is a key of none of the first 10,000 rows" in told
    caplog.clear()
    assert input_columns(read_prompts(str(array)), str(array), wanted=["late"]) == ("b", "a")
    assert not [r for r in caplog.records if r.name == "rig_ray.batch.source"]
    assert shutdowns == []  # no Ray Data run at all


def test_csv_and_parquet_columns(tmp_path: Path, shutdowns: list[bool]) -> None:
    table = tmp_path / "in.csv"
    with table.open("w", newline="") as handle:
        csv.writer(handle).writerows([["id", "topic"], ["007", "sea"]])
    assert _columns(table) == ("id", "topic")
    packed = tmp_path / "in.csv.gz"
    packed.write_bytes(gzip.compress(table.read_bytes()))
    assert _columns(packed) == ("id", "topic")
    folder = tmp_path / "year=2026"  # a hive folder: Ray adds its key as a column
    folder.mkdir()
    pq.write_table(pa.table({"id": ["1"], "topic": ["x"]}), folder / "part.parquet")
    assert _columns(folder) == ("id", "topic", "year")
    assert shutdowns == []


def test_a_csv_file_whose_first_row_is_larger_than_a_block(tmp_path: Path) -> None:
    """Its columns (read by the driver) and its rows (by the job) both: pyarrow reads CSV in
    blocks of 1 MiB, and a first row over one failed the job before it began."""
    big = "x" * (3 << 20)
    source = tmp_path / "in.csv"
    source.write_text(f'id,prompt\nz,"{big}"\na,p\n')
    assert _columns(source) == ("id", "prompt")
    left = pending(str(source), str(tmp_path / "out"), generator=EchoGenerator(model="e"))
    assert left == 2


def test_a_bad_first_line_is_refused_by_the_job_naming_the_input_and_line(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "1"}\n{"id": \n')
    with pytest.raises(BatchInputError, match=r"cannot read .*in\.jsonl.*line 2 is not JSON"):
        pending(str(source), str(tmp_path / "out"), generator=EchoGenerator(model="e"))


def test_a_datasets_columns_come_from_ray_or_from_its_first_row_read_to_the_end(
    shutdowns: list[bool],
) -> None:
    import ray.data

    known = from_blocks([put_block(pa.table({"a": [1], "b": ["x"]}))])
    assert dataset_columns(known) == ("a", "b") and shutdowns == []
    ran = ray.data.range(40, override_num_blocks=8).map_batches(lambda batch: batch)
    assert dataset_columns(ran) == ("id",)
    assert shutdowns and not any(shutdowns)


def test_jobs_over_json_and_csv_files_never_shut_a_run_down_by_force(
    tmp_path: Path, shutdowns: list[bool]
) -> None:
    folder = tmp_path / "json"
    folder.mkdir()
    for name in "abcd":
        _jsonl(folder / f"{name}.jsonl", [{"id": f"{name}{n}", "topic": "x"} for n in range(30)])
    table = tmp_path / "in.csv"
    with table.open("w", newline="") as handle:
        csv.writer(handle).writerows([["id", "topic"], *[[f"c{n}", "y"] for n in range(30)]])
    for source, rows in ((folder, 120), (table, 30)):
        out = tmp_path / f"out-{source.name}"
        echo = EchoGenerator(model="e")
        assert pending(str(source), str(out), generator=echo, template="$topic") == rows
        summary = echo_run(source, out, template="$topic", batch_size=8)
        assert summary.generations_written == rows
    assert shutdowns and not any(shutdowns)


def test_a_bad_row_past_the_first_rows_is_told_in_one_line(tmp_path: Path) -> None:
    """Rows past those the driver reads for the columns are read by Ray Data's tasks; the
    first pass turns a task's error into the job's one line, with no log of Ray Data's."""
    rows = [{"id": str(n), "topic": "x"} for n in range(ROWS_PER_BLOCK)]
    source = _jsonl(tmp_path / "in.jsonl", rows)
    with source.open("a") as out:
        out.write('{"id": "bad", "topic": \n')
    told: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = told.append  # type: ignore[method-assign]
    ray_data = logging.getLogger("ray.data")
    ray_data.addHandler(handler)
    said = f"^cannot read the input: BatchInputError: line {ROWS_PER_BLOCK + 1} is not JSON"
    try:
        with pytest.raises(BatchInputError, match=said) as refused:
            echo_run(source, tmp_path / "out", template="$topic")
        assert "\n" not in str(refused.value)
        echo = EchoGenerator(model="e")
        with pytest.raises(BatchInputError, match=said):
            pending(str(source), str(tmp_path / "out"), generator=echo, template="$topic")
    finally:
        ray_data.removeHandler(handler)
    assert not [record.getMessage()[:200] for record in told]


def test_a_header_that_names_a_column_twice_is_refused_naming_it(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,prompt,prompt\na,hello,again\n")
    with pytest.raises(BatchInputError, match=r"in\.csv.*2 columns are named 'prompt'") as caught:
        pending(str(source), str(tmp_path / "out"), generator=EchoGenerator(model="e"))
    assert "KeyError" not in str(caught.value)


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_a_column_that_only_later_files_have_is_taken(tmp_path: Path, kind: str) -> None:
    """A folder whose schema grew: the template's column is in the second file only. Its
    rows are made; the first file's rows, which lack the value, fail one by one."""
    folder = tmp_path / "in"
    folder.mkdir()
    early = [{"id": f"a{n}", "prompt": "p"} for n in range(3)]
    late = [{"id": f"b{n}", "prompt": "p", "topic": f"t{n}"} for n in range(4)]
    for name, rows in (("a", early), ("b", late)):
        path = folder / f"{name}.{kind}"
        if kind == "jsonl":
            _jsonl(path, rows)
        elif kind == "csv":
            with path.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        else:
            pq.write_table(pa.Table.from_pylist(rows), path)
    out = tmp_path / "out"
    summary = echo_run(folder, out, template="About $topic")
    assert summary.generations_written == 7
    table = pq.read_table(str(out)).sort_by("id")
    texts = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True))
    errors = dict(
        zip(table.column("id").to_pylist(), table.column("error").to_pylist(), strict=True)
    )
    assert [texts[f"b{n}"] for n in range(4)] == [f"About t{n}" for n in range(4)]
    assert all("'topic' is null" in (errors[f"a{n}"] or "") for n in range(3))
    with pytest.raises(BatchInputError, match="template field 'topik' is not a column"):
        echo_run(folder, tmp_path / "other", template="About $topik")


def _late_key_file(path: Path, at: int) -> Path:
    """A JSON Lines file whose `late` key is held by one row only, the `at`th (from 0): past
    the rows whose keys the driver reads before the job runs, when `at` >= ROWS_PER_BLOCK."""
    rows: list[dict[str, t.Any]] = [{"id": f"r{n}", "topic": "t"} for n in range(at + 2)]
    rows[at]["late"] = "LATE"
    _jsonl(path, rows)
    return path


def test_a_template_field_first_held_past_the_first_rows_is_a_column(tmp_path: Path) -> None:
    source = _late_key_file(tmp_path / "in.jsonl", ROWS_PER_BLOCK + 1)
    out = tmp_path / "out"
    summary = echo_run(source, out, template="$topic $late")
    table = read_output(str(out))
    assert summary.generations_written == table.num_rows == ROWS_PER_BLOCK + 3
    rows = {row["id"]: row for row in table.select(["id", "text", "error"]).to_pylist()}
    assert rows[f"r{ROWS_PER_BLOCK + 1}"]["text"] == "t LATE"
    assert rows["r0"]["error"] == "BatchInputError: column 'late' is null in this row"


@pytest.mark.parametrize("at", [3, ROWS_PER_BLOCK + 1])
def test_a_template_field_no_row_holds_is_refused_before_anything_is_written(
    tmp_path: Path, at: int
) -> None:
    source = _late_key_file(tmp_path / "in.jsonl", at)
    out = tmp_path / "out"
    with pytest.raises(BatchInputError, match=r"template field 'lat' is not a column") as caught:
        echo_run(source, out, template="$topic $lat")
    assert "late" in str(caught.value)  # every column the rows hold is named
    assert not list(out.glob("*.parquet"))
