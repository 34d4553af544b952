"""Inputs whose files (or blocks) type their columns differently: every row leaves the
driver's pass with one schema, so the output parts share it and read back as one table with
any Parquet reader; columns whose types cannot be joined are refused, by name, before any
model loads. A search over blocks of random columns and types, then two files end to end."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig_ray.batch import BatchSummary, run
from rig_ray.batch.data_tasks import from_blocks, put_block
from rig_ray.batch.prepare import INTERNAL_COLUMNS, plan_rows
from rig_ray.batch.prompts import PromptSpec
from rig_ray.errors import BatchInputError
from tests.fakes import EchoGenerator

pytestmark = pytest.mark.usefixtures("local_ray")

SPEC = PromptSpec(template="$prompt").resolve(["id", "prompt"])
NUMBERS = {"int": pa.int64(), "float": pa.float64(), "null": pa.null()}
"""Column types that join: each block's `score` is one of them, or the block lacks it."""


def _values(kind: str, rows: int, first: int) -> list[t.Any]:
    if kind == "int":
        return list(range(first, first + rows))
    if kind == "float":
        return [n + 0.5 for n in range(first, first + rows)]
    return [None] * rows


block_kinds = st.lists(
    st.tuples(st.integers(1, 4), st.sampled_from([*NUMBERS, "absent"]), st.booleans()),
    min_size=1,
    max_size=5,
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kinds=block_kinds)
def test_kept_rows_share_one_schema_and_keep_their_values(
    kinds: list[tuple[int, str, bool]],
) -> None:
    blocks, expected = [], []
    for rows, score, note in kinds:
        first = len(expected)
        columns: dict[str, t.Any] = {
            "id": [f"r{n}" for n in range(first, first + rows)],
            "prompt": ["p"] * rows,
        }
        if score != "absent":
            columns["score"] = pa.array(_values(score, rows, first), type=NUMBERS[score])
        if note:  # a column only some blocks have
            columns["note"] = [f"n{n}" for n in range(first, first + rows)]
        blocks.append(put_block(pa.table(columns)))
        scores = _values(score, rows, first) if score != "absent" else [None] * rows
        notes = columns.get("note", [None] * rows)
        expected.extend(zip(columns["id"], scores, notes, strict=True))
    plan = plan_rows(from_blocks(blocks), SPEC, num_generations=1, finished={})
    assert plan.dataset is not None
    tables = [
        t.cast(pa.Table, b)
        for b in plan.dataset.iter_batches(batch_format="pyarrow", batch_size=None)
    ]
    schemas = {table.schema.remove_metadata().to_string() for table in tables}
    assert len(schemas) == 1, schemas
    whole = pa.concat_tables(tables)  # no promotion: it works only if the schemas are one
    assert set(whole.column_names) - set(INTERNAL_COLUMNS) == (
        {"id", "prompt"}
        | ({"score"} if any(kind != "absent" for _, kind, _ in kinds) else set())
        | ({"note"} if any(note for *_, note in kinds) else set())
    )
    got = zip(
        whole.column("id").to_pylist(),
        whole.column("score").to_pylist() if "score" in whole.column_names else [None] * len(whole),
        whole.column("note").to_pylist() if "note" in whole.column_names else [None] * len(whole),
        strict=True,
    )
    assert list(got) == expected  # 3 == 3.0: an int widened to a float keeps its value


@pytest.mark.parametrize("clash_at", [0, 1, 3])
def test_a_column_of_numbers_and_text_is_refused_by_name_and_row(clash_at: int) -> None:
    blocks = [
        put_block(
            pa.table({"id": [f"r{n}"], "prompt": ["p"], "score": ["high" if n == clash_at else n]})
        )
        for n in range(4)
    ]
    if clash_at == 0:
        blocks = blocks[:2]  # text first, then a number
    with pytest.raises(BatchInputError) as raised:
        plan_rows(from_blocks(blocks), SPEC, num_generations=1, finished={})
    message = str(raised.value)
    assert "'score'" in message
    assert f"from input row {max(clash_at, 1) + 1} on" in message


def echo_run(source: Path, out: Path, **options: t.Any) -> BatchSummary:
    """A batch job of `source` into `out` on the echo generator (a quarter CPU, no progress
    lines)."""
    generator = EchoGenerator(model="e")
    return run(str(source), str(out), generator=generator, num_cpus=0.25, progress=False, **options)


def _jsonl(path: Path, rows: list[dict[str, t.Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_files_that_type_a_column_differently_give_parts_of_one_schema(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    _jsonl(source / "a.jsonl", [{"id": f"a{n}", "topic": "x", "score": n} for n in range(12)])
    _jsonl(
        source / "b.jsonl",
        [{"id": f"b{n}", "topic": "y", "score": n + 0.5, "extra": "e"} for n in range(12)],
    )
    out = tmp_path / "out"
    summary = echo_run(source, out, template="$topic", rows_per_part=4, batch_size=4)
    assert summary.generations_written == 24 and len(summary.parts) >= 2
    schemas = {pq.read_schema(part).remove_metadata().to_string() for part in summary.parts}
    assert len(schemas) == 1
    # pyarrow's own folder reader takes the first part's schema for every part
    table = pq.read_table(str(out)).sort_by("id")
    rows = dict(zip(table.column("id").to_pylist(), table.column("score").to_pylist(), strict=True))
    assert rows["a3"] == 3 and rows["b3"] == 3.5
    assert table.column("extra").to_pylist().count("e") == 12


def test_a_second_file_with_text_where_the_first_has_numbers_writes_nothing(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    _jsonl(source / "a.jsonl", [{"id": f"a{n}", "topic": "x", "score": n} for n in range(3)])
    _jsonl(source / "b.jsonl", [{"id": f"b{n}", "topic": "x", "score": "high"} for n in range(3)])
    out = tmp_path / "out"
    with pytest.raises(BatchInputError, match=r"column 'score' holds string from input row 4 on"):
        echo_run(source, out, template="$topic")
    assert not list(out.glob("*.parquet"))


def test_an_int_too_large_for_the_floats_of_other_files_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    _jsonl(source / "a.jsonl", [{"id": "a", "topic": "x", "score": 0.5}])
    _jsonl(source / "b.jsonl", [{"id": "b", "topic": "x", "score": 2**53 + 1}])
    with pytest.raises(BatchInputError, match=r"cannot share one schema .*9007199254740993"):
        echo_run(source, tmp_path / "out", template="$topic")
