"""A later stage's input made part by part from the stage before's output (no Ray): only new
parts are read, a part rewritten or removed is followed, a repeated key keeps the row the
clean-up keeps, and no whole-stage table is built."""

from __future__ import annotations

import os
import typing as t
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from rig_ray.batch import pipeline_inputs
from rig_ray.batch.output import OutputFolder
from rig_ray.batch.pipeline_data import StageInput
from rig_ray.batch.pipeline_inputs import Derivation, InputUpdate, update_input
from rig_ray.batch.schema import OUTPUT_SCHEMA

HOW = Derivation(
    "answer", StageInput("q.jsonl", ["id", "question"], "id"), earlier=(), keep_errors=False
)


def part(
    folder: Path,
    name: str,
    rows: list[tuple[str, int, str | None]],
    texts: list[str] | None = None,
) -> Path:
    """A part of the stage before: (id, generation_index, error) rows, and their texts
    (by default `answer <id>/<generation_index>`)."""
    columns: dict[str, t.Any] = {name: [None] * len(rows) for name in OUTPUT_SCHEMA.names}
    columns["id"] = [row[0] for row in rows]
    columns["generation_index"] = [row[1] for row in rows]
    columns["error"] = [row[2] for row in rows]
    columns["text"] = texts or [f"answer {row[0]}/{row[1]}" for row in rows]
    table = pa.table(columns, schema=OUTPUT_SCHEMA).append_column(
        "question", pa.array([f"question {row[0]}" for row in rows])
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-{name}.parquet"
    pq.write_table(table, path)
    return path


def made(target: Path) -> list[dict[str, t.Any]]:
    files = sorted(target.rglob("*.parquet"))
    rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    return sorted(rows, key=lambda row: row["id"])


def update(stage: Path, target: Path) -> InputUpdate | None:
    return update_input(OutputFolder(str(stage)), str(target), pafs.LocalFileSystem(), HOW)


def test_parts_are_read_once_and_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stage, target = tmp_path / "answer", tmp_path / "_inputs" / "judge"
    assert update(stage, target) is None  # nothing written yet
    part(stage, "1", [("q0", 0, None), ("q0", 1, None), ("q1", 0, "boom")])
    columns, rows, fresh = t.cast(InputUpdate, update(stage, target))
    assert rows == 2 and columns[:2] == ["id", "parent_id"] and fresh == "000001"
    assert {"question", "text", "answer_text", "answer_generation_index"} <= set(columns)
    first = made(target)
    assert [(r["id"], r["parent_id"], r["text"]) for r in first] == [
        ("q0/0", "q0", "answer q0/0"),
        ("q0/1", "q0", "answer q0/1"),
    ]
    reads: list[str] = []
    real = pq.read_table

    def counted(source: t.Any, *args: t.Any, **kwargs: t.Any) -> pa.Table:
        if kwargs.get("columns") is None:  # a whole part, not the keys
            reads.append(str(source))
        return real(source, *args, **kwargs)

    monkeypatch.setattr(pipeline_inputs.pq, "read_table", counted)
    part(stage, "2", [("q1", 1, None)])
    second = t.cast(InputUpdate, update(stage, target))
    assert (second.rows, second.fresh) == (3, "000002")
    assert [Path(p).name for p in reads] == ["part-2.parquet"]  # only the new part
    assert [r["id"] for r in made(target / "000002")] == ["q1/1"]  # a round reads just these
    reads.clear()
    assert t.cast(InputUpdate, update(stage, target))[1:] == (3, None)
    assert reads == []  # nothing new: nothing read
    os.remove(stage / "part-1.parquet")  # a part that goes takes its rows along
    assert [r["id"] for r in (update(stage, target), made(target))[1]] == ["q1/1"]


def test_a_repeated_key_keeps_the_first_success(tmp_path: Path) -> None:
    stage, target = tmp_path / "answer", tmp_path / "_inputs" / "judge"
    part(stage, "1", [("q0", 0, "boom"), ("q1", 0, None)])
    part(stage, "2", [("q0", 0, None)])  # a retry, before its clean-up
    keep = HOW._replace(keep_errors=True)
    update_input(OutputFolder(str(stage)), str(target), pafs.LocalFileSystem(), keep)
    rows = made(target)
    assert [(r["id"], r["error"] if "error" in r else r["answer_error"]) for r in rows] == [
        ("q0/0", None),
        ("q1/0", None),
    ]
    part(stage, "1", [("q1", 0, None)])  # the clean-up rewrites part 1 under its own name
    update_input(OutputFolder(str(stage)), str(target), pafs.LocalFileSystem(), keep)
    assert [r["id"] for r in made(target)] == ["q0/0", "q1/0"]
    assert len(list(target.rglob("*.parquet"))) == 2  # the old file of part 1 went


def test_a_merged_stage_before_gives_the_same_rows_in_fewer_files(tmp_path: Path) -> None:
    stage, target = tmp_path / "answer", tmp_path / "_inputs" / "judge"
    part(stage, "1", [("q0", 0, None), ("q0", 1, None)])
    part(stage, "2", [("q1", 0, "boom"), ("q1", 1, None)])
    part(stage, "3", [("q2", 0, None)])
    update(stage, target)
    before = made(target)
    assert [r["id"] for r in before] == ["q0/0", "q0/1", "q1/1", "q2/0"]
    assert OutputFolder(str(stage)).merge(rows_per_part=10).into == 1
    after = t.cast(InputUpdate, update(stage, target))
    assert (after.rows, after.fresh) == (4, "000002")
    assert made(target) == before  # the same ids, parents and columns
    assert [f.name for f in target.rglob("*.parquet")] == [
        next(f.name for f in (target / "000002").iterdir())
    ]  # the small parts' files went with them
    assert [p.name for p in target.iterdir()] == ["000002"]  # and so did their subfolder
