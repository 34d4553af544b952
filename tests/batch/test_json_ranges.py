"""A search over JSON Lines files read in byte ranges (no Ray): whatever the ranges' size,
and wherever they cut the lines, the tasks' rows together are the rows of the file read
whole, in order, and a file with a bad line is refused with the same message, naming the
line (or row) in the whole file. Then a job on a local Ray, read in ranges and whole."""

from __future__ import annotations

import gzip
import json
import tempfile
import typing as t
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig_ray.batch import json_input, json_values, read_output
from rig_ray.batch.json_input import Part, json_parts, read_part
from rig_ray.errors import BatchInputError
from tests.batch.test_input_schema import echo_run
from tests.batch.test_json_rows_fuzz import _valid, ids
from tests.serve.test_fuzz import texts

FILESYSTEM = pafs.LocalFileSystem()

# Rows whose columns keep one type each (an int within 2**53 and a float join: a larger int
# would lose digits as a float), so only the lines' own faults can refuse a file.
rows = st.fixed_dictionaries(
    {},
    optional={
        "id": ids,
        "prompt": texts,
        "n": st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False),
        "tags": st.lists(texts, max_size=3),
        "params": st.fixed_dictionaries({}, optional={"temperature": st.floats(0, 2)}),
    },
)
good_lines = rows.filter(_valid).map(lambda row: json.dumps(row, ensure_ascii=False).encode())
blank_lines = st.sampled_from([b"", b"  ", b"\t", "\u00a0".encode()])
bad_lines = st.sampled_from([b"{not json", b"[1, 2]", b"7", b'"text"', b"\xff\xfe{}", b"{}}"])
files = st.tuples(
    st.lists(st.one_of(good_lines, good_lines, blank_lines), min_size=0, max_size=12),
    st.one_of(st.none(), st.tuples(st.integers(0, 12), bad_lines)),
    st.sampled_from([b"\n", b"\r\n"]),
    st.booleans(),  # a byte order mark
    st.booleans(),  # a newline after the last line
)


def _outcome(read: t.Callable[[], list[pa.Table]]) -> tuple[str, t.Any]:
    try:
        tables = read()
    except BatchInputError as refused:
        return "refused", str(refused)
    return "rows", [_set(row) for table in tables for row in table.to_pylist()]


def _one_schema(tables: list[pa.Table]) -> list[pa.Table]:
    assert all(table.schema.equals(tables[0].schema) for table in tables)
    return tables


def _set(value: t.Any) -> t.Any:
    """`value` without its null fields, nested ones too: a column (or struct field) that one
    range lacks is null there once the plan joins the ranges' schemas."""
    if isinstance(value, dict):
        return {key: _set(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_set(item) for item in value]
    return value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(file=files, size=st.integers(1, 400), chunk=st.sampled_from([1, 2, 5, 64, 1 << 20]))
def test_ranges_read_what_the_whole_file_holds(
    file: tuple[list[bytes], tuple[int, bytes] | None, bytes, bool, bool], size: int, chunk: int
) -> None:
    """Also gzipped (read whole, decompressed as it streams), and read `chunk` bytes at a
    time, so that lines and the byte order mark fall across reads."""
    lines, bad, ending, bom, last_newline = file
    lines = list(lines)
    if bad is not None:
        lines.insert(min(bad[0], len(lines)), bad[1])
    data = (b"\xef\xbb\xbf" if bom else b"") + ending.join(lines)
    data += ending if last_newline and lines else b""
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "in.jsonl")
        Path(path).write_bytes(data)
        whole = Part(path, 0, None, len(data))
        parts = json_parts(FILESYSTEM, [path], size=size)
        assert sum(part.size or 0 for part in parts) == len(data)
        zipped = str(Path(folder) / "in.jsonl.gz")
        Path(zipped).write_bytes(gzip.compress(data))
        expected = _outcome(lambda: list(read_part(FILESYSTEM, whole, "id")))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(json_input, "_CHUNK", chunk)
            got = _outcome(lambda: [t for p in parts for t in read_part(FILESYSTEM, p, "id")])
            (gz_part,) = json_parts(FILESYSTEM, [zipped], size=size)
            from_gzip = _outcome(lambda: list(read_part(FILESYSTEM, gz_part, "id")))
            # read twice and handed over block by block, two rows a block
            patch.setattr(json_input, "HOLD_BYTES", 0)
            patch.setattr(json_values, "ROWS_PER_BLOCK", 2)
            streamed = _outcome(lambda: _one_schema(list(read_part(FILESYSTEM, gz_part, "id"))))
    assert got == expected
    assert from_gzip == expected
    assert streamed == expected
    if bad is not None:
        assert expected[0] == "refused"


def _job(source: Path, out: Path) -> dict[str, str]:
    summary = echo_run(source, out, template="$prompt")
    assert summary.generations_written == summary.rows_in
    table = read_output(str(out))
    return dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True))


@pytest.mark.usefixtures("local_ray")
def test_a_job_reads_a_file_in_ranges_as_it_reads_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows with and without ids (ids made from the content, repeats numbered in input
    order) and a column only later rows have: the same rows and ids from 1 task or from over
    10, and a bad line in a later range named by its line in the file."""
    lines = []
    for n in range(60):
        row: dict[str, t.Any] = {"prompt": f"p{n % 7}"}  # repeats, told apart by their order
        if n % 3:
            row["id"] = n
        if n > 40:
            row["late"] = n
        lines.append(json.dumps(row))
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    whole = _job(source, tmp_path / "whole")
    monkeypatch.setattr(json_input, "RANGE_BYTES", 128)
    assert len(json_parts(FILESYSTEM, [str(source)])) >= 10
    assert _job(source, tmp_path / "ranges") == whole
    assert len(whole) == 60
    lines[47] = "{not json"
    source.write_text("\n".join(lines) + "\n")
    with pytest.raises(BatchInputError, match="line 48 is not JSON"):
        _job(source, tmp_path / "bad")
