"""A JSON file read whole by one task (compressed, or one JSON array): past `HOLD_BYTES` its
tables are handed over as they are made, in the one schema a first reading found."""

from __future__ import annotations

import gzip
import json
import typing as t
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from rig_ray.batch import json_input, json_values
from rig_ray.batch.json_input import json_parts, read_part
from rig_ray.errors import BatchInputError

FILESYSTEM = pafs.LocalFileSystem()


def _row(n: int) -> dict[str, t.Any]:
    if 10_000 <= n < 11_000:  # a block of rows of `{}`
        return {}
    row: dict[str, t.Any] = {"id": f"r{n}", "prompt": f"{n} " + "x" * 200}
    row["n"] = n if n < 15_000 else n + 0.5  # ints, then floats: the column becomes float
    if n >= 25_000:
        row["late"] = "y"  # a column that only the last rows have
    return row


def _read(path: Path) -> tuple[list[dict[str, t.Any]], set[str], int]:
    """The rows, the schemas and the most Arrow memory held when a table was handed over,
    holding none of the tables meanwhile."""
    (part,) = json_parts(FILESYSTEM, [str(path)])
    rows: list[dict[str, t.Any]] = []
    schemas: set[str] = set()
    start, most = pa.total_allocated_bytes(), 0
    for table in read_part(FILESYSTEM, part, "id"):
        most = max(most, pa.total_allocated_bytes() - start)
        rows.extend(table.to_pylist())
        schemas.add(table.schema.to_string())
        del table
    return rows, schemas, most


@pytest.mark.parametrize("array", [False, True], ids=["jsonl-gz", "json-array"])
def test_a_file_too_large_to_hold_is_handed_over_as_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, array: bool
) -> None:
    rows = [_row(n) for n in range(30_000)]
    if array:
        path = tmp_path / "in.json"
        path.write_text(json.dumps(rows))
    else:
        path = tmp_path / "in.jsonl.gz"
        path.write_bytes(gzip.compress("\n".join(json.dumps(row) for row in rows).encode()))
    monkeypatch.setattr(json_values, "ROWS_PER_BLOCK", 1000)
    held, held_schemas, held_most = _read(path)
    monkeypatch.setattr(json_input, "HOLD_BYTES", 512 << 10)  # about two blocks
    streamed, schemas, most = _read(path)

    assert streamed == held
    assert len(streamed) == 30_000
    assert schemas == held_schemas and len(schemas) == 1
    (schema,) = schemas
    assert "n: double" in schema and "late: string" in schema
    assert streamed[10_000] == {"id": None, "prompt": None, "n": None, "late": None}
    assert streamed[14_999]["n"] == 14_999 and streamed[15_000]["n"] == 15_000.5
    # The file's tables take about 7 MiB; reading it takes about 1 MiB of buffers besides.
    # Held, every table is alive when the first is handed over; read twice, about one.
    assert held_most > 6 << 20
    assert most < 3 << 20


@pytest.mark.parametrize("hold", [64 << 20, 0], ids=["held", "read-twice"])
def test_a_column_whose_type_changes_between_blocks_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hold: int
) -> None:
    lines = [json.dumps({"id": n, "n": n if n < 100 else f"text {n}"}) for n in range(200)]
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    monkeypatch.setattr(json_values, "ROWS_PER_BLOCK", 100)
    monkeypatch.setattr(json_input, "HOLD_BYTES", hold)
    (part,) = json_parts(FILESYSTEM, [str(path)])
    with pytest.raises(BatchInputError) as refused:
        list(read_part(FILESYSTEM, part, "id"))
    assert str(refused.value).startswith(
        "column 'n' holds string from JSON row 101 on, but int64 in the rows before it"
    )


def test_a_byte_range_names_the_row_in_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def lines(text_from: int) -> str:  # a text takes as many bytes as the int it replaces
        values = [100_000 + n if n < text_from else f"t{n:03d}" for n in range(400)]
        return "".join(json.dumps({"id": n, "n": value}) + "\n" for n, value in enumerate(values))

    path = tmp_path / "in.jsonl"
    path.write_text(lines(400))
    monkeypatch.setattr(json_values, "ROWS_PER_BLOCK", 100)
    monkeypatch.setattr(json_input, "RANGE_BYTES", path.stat().st_size // 2 + 1)
    first, second = json_parts(FILESYSTEM, [str(path)])
    before = sum(table.num_rows for table in read_part(FILESYSTEM, first, "id"))
    path.write_text(lines(before + 100))  # from the second range's second block on
    with pytest.raises(BatchInputError) as refused:
        list(read_part(FILESYSTEM, second, "id"))
    assert str(refused.value).startswith(
        f"column 'n' holds string from JSON row {before + 101} on, but int64 in the rows before it"
    )
