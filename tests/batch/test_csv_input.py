"""Reading CSV input (`rig_ray.batch.csv_input`): types inferred over a whole file, and a
search over random files (no Ray), then a job over a file past Ray Data's first block."""

from __future__ import annotations

import csv
import gzip
import io
import os
import typing as t
from pathlib import Path
from unittest import mock

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig_ray.batch import csv_input
from rig_ray.batch.csv_input import csv_tables
from rig_ray.batch.json_values import ROWS_PER_BLOCK
from rig_ray.batch.prompts import PromptSpec
from rig_ray.errors import BatchInputError

EXAMPLES = int(os.environ.get("RIG_RAY_FUZZ_EXAMPLES", 200))
LOCAL = pafs.LocalFileSystem()
PAST_FIRST_BLOCK = 120_000
"""Rows of about 12 bytes: past the 1 MiB from which Ray Data's reader took the types."""


def _read(path: Path) -> pa.Table:
    tables = list(csv_tables(LOCAL, str(path), "id", path.stat().st_size))
    return pa.concat_tables(tables)


def _numbered(tail: bytes, path: Path) -> Path:
    rows = b"".join(b"r%d,p,%d\n" % (n, n) for n in range(PAST_FIRST_BLOCK))
    path.write_bytes(b"id,prompt,n\n" + rows + tail)
    return path


@pytest.mark.parametrize(
    ("tail", "kind", "last"),
    [(b"z,p,2.5\n", pa.float64(), 2.5), (b"z,p,many\n", pa.string(), "many")],
)
def test_a_column_takes_the_type_of_all_its_rows_not_of_its_first_block(
    tmp_path: Path, tail: bytes, kind: pa.DataType, last: t.Any
) -> None:
    table = _read(_numbered(tail, tmp_path / "in.csv"))
    assert table.num_rows == PAST_FIRST_BLOCK + 1
    assert table.schema.field("n").type == kind and table.schema.field("id").type == pa.string()
    assert table["n"][-1].as_py() == last and table["id"][-1].as_py() == "z"


def test_a_file_comes_in_blocks_of_rows_and_a_gzip_file_reads_the_same(tmp_path: Path) -> None:
    path = _numbered(b"", tmp_path / "in.csv")
    blocks = list(csv_tables(LOCAL, str(path), "id", path.stat().st_size))
    assert [b.num_rows for b in blocks[:-1]] == [ROWS_PER_BLOCK] * (len(blocks) - 1)
    packed = tmp_path / "in.csv.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    assert _read(packed).equals(pa.concat_tables(blocks))


def test_a_file_past_the_whole_read_is_streamed_and_typed_over_all_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Streamed, a file starts from the types of its first block (here 1 MiB, as a test's
    # files are small) and widens a column wherever a cell further down does not fit.
    monkeypatch.setattr(csv_input, "STREAM_BLOCK_BYTES", 1 << 20)
    path = _numbered(b"", tmp_path / "in.csv")
    streamed = list(csv_tables(LOCAL, str(path), "id", path.stat().st_size, whole_bytes=0))
    assert sum(t.num_rows for t in streamed) == PAST_FIRST_BLOCK
    assert max(t.num_rows for t in streamed) <= ROWS_PER_BLOCK
    for tail, kind in ((b"z,p,2.5\n", pa.float64()), (b"z,p,many\n", pa.string())):
        changing = _numbered(tail, tmp_path / "late.csv")
        size = changing.stat().st_size
        tables = list(csv_tables(LOCAL, str(changing), "id", size, whole_bytes=0))
        assert {table.schema.field("n").type for table in tables} == {kind}
        assert pa.concat_tables(tables).equals(_read(changing))


@pytest.mark.parametrize("whole", [True, False])
def test_a_row_larger_than_a_block_is_read(tmp_path: Path, whole: bool) -> None:
    """A cell of a few MiB (a long document to summarise), quoted or not, read whole or
    streamed: pyarrow's reader takes blocks of 1 MiB, and a row over one failed the file."""
    big = "x" * (3 * csv_input.BLOCK_BYTES)
    path = _numbered(f'y,"{big}",1\nz,{big},2\n'.encode(), tmp_path / "in.csv")
    size = path.stat().st_size
    tables = list(csv_tables(LOCAL, str(path), "id", size, whole_bytes=size if whole else 0))
    table = pa.concat_tables(tables)
    assert table.num_rows == PAST_FIRST_BLOCK + 2
    assert table["prompt"][-2:].to_pylist() == [big, big] and table["n"][-1].as_py() == 2


@pytest.mark.parametrize("name", ["in.tsv", "in.tsv.gz", "streamed.tsv"])
def test_a_tsv_file_is_split_at_tabs(tmp_path: Path, name: str) -> None:
    """Tab-separated: commas stay in their cells, a quoted tab too, whole or streamed."""
    text = 'id\tQuestion Text\tn\nr0\thello, world\t1\nr1\t"a\tb"\t2.5\n'
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    size = path.stat().st_size
    whole_bytes = 0 if name.startswith("streamed") else size
    tables = list(csv_tables(LOCAL, str(path), "id", size, whole_bytes=whole_bytes))
    table = pa.concat_tables(tables)
    assert table.column_names == ["id", "Question Text", "n"]
    assert table.to_pylist() == [
        {"id": "r0", "Question Text": "hello, world", "n": 1.0},
        {"id": "r1", "Question Text": "a\tb", "n": 2.5},
    ]
    assert csv_input.csv_columns(LOCAL, str(path)) == ["id", "Question Text", "n"]


def test_a_streamed_id_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = _numbered(b"\xff,p,1\n", tmp_path / "in.csv")
    with pytest.raises(BatchInputError, match=r"in\.csv.*column 'id'.*UTF8") as caught:
        list(csv_tables(LOCAL, str(path), "id", path.stat().st_size, whole_bytes=0))
    assert caught.value.column == "id"


_TYPED_CELLS = [
    *("", "nan", "0", "1", "-3", "007", "2.5", "1e3", "inf", "true", "False"),
    *("2024-01-01", "2024-01-01 10:00:00", "2024-01-01T10:00:00.5", "2024-01-01T10:00"),
    *("2024-01-01T10:00:00Z", "2024-01-01 10:00:00+01:00", "2024-01-02T00:00:00.25Z"),
    *("12:30:00", "many", '"a,b"', "\udcff"),
]
"""Cells of every type pyarrow's CSV reader infers (`\udcff`: a byte that is not UTF-8)."""


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    columns=st.lists(
        st.lists(st.sampled_from(_TYPED_CELLS), min_size=1, max_size=40), min_size=1, max_size=3
    ),
    first_block=st.integers(16, 256),
    block=st.integers(16, 128),
)
def test_a_streamed_file_is_typed_as_a_whole_read_types_it(
    tmp_path_factory: pytest.TempPathFactory,
    columns: list[list[str]],
    first_block: int,
    block: int,
) -> None:
    """Whatever its first block holds, and however many blocks its rows take, a streamed
    file reads as the same table as the same file read whole: each column of the type of
    all its rows, every value kept. (The blocks here are bytes, not MiB, so rows are larger
    than blocks.)"""
    rows = max(len(column) for column in columns)
    lines = [",".join(["id", *(f"c{n}" for n in range(len(columns)))])]
    for row in range(rows):
        cells = [column[row] if row < len(column) else "" for column in columns]
        lines.append(",".join([f"r{row}", *cells]))
    path = tmp_path_factory.mktemp("csv") / "in.csv"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogateescape") + b"\n")
    with (
        mock.patch.object(csv_input, "STREAM_BLOCK_BYTES", first_block),
        mock.patch.object(csv_input, "BLOCK_BYTES", block),
    ):
        streamed = list(csv_tables(LOCAL, str(path), "id", path.stat().st_size, whole_bytes=0))
    assert pa.concat_tables(streamed).equals(_read(path))


def test_a_row_that_is_not_csv_names_the_file(tmp_path: Path) -> None:
    path = _numbered(b"z,p,1,extra\n", tmp_path / "in.csv")
    with pytest.raises(BatchInputError, match=r"CSV file '.*in\.csv'.*Expected 3 columns, got 4"):
        _read(path)


# -- a search over random files ----------------------------------------------------------------

_BREAK = "\ue000"
"""Where a cell gets a byte that is not UTF-8 (a character no cell holds)."""
cells = st.text(st.characters(exclude_categories=["Cs"], exclude_characters=_BREAK), max_size=12)
ids = st.one_of(cells, st.integers(-(10**20), 10**20).map(str), st.sampled_from(["007", "1.0"]))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(ids, cells, st.booleans()), min_size=1, max_size=8, unique_by=lambda r: r[0]
    ),
    crlf=st.booleans(),
    bom=st.booleans(),
)
def test_each_row_keeps_its_id_and_its_text_as_written(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[str, str, bool]],
    crlf: bool,
    bom: bool,
) -> None:
    """Any text (commas, quotes, line breaks, any code point) in a cell, written by Python's
    `csv` module, reads back as written; a cell that is not UTF-8 fails its own row only."""
    text = io.StringIO()
    # With "\n" lines the `csv` module leaves a cell's lone "\r" unquoted: every cell quoted.
    quoting = csv.QUOTE_MINIMAL if crlf else csv.QUOTE_ALL
    writer = csv.writer(text, lineterminator="\r\n" if crlf else "\n", quoting=quoting)
    writer.writerow(["id", "prompt"])
    for row_id, cell, broken in rows:  # `p:` keeps the column text, never a number
        writer.writerow([row_id, f"p{_BREAK if broken else ':'}{cell}"])
    raw = (("\ufeff" if bom else "") + text.getvalue()).encode()
    raw = raw.replace(_BREAK.encode(), b":\xff")  # a byte that is never UTF-8
    path = tmp_path_factory.mktemp("csv") / "in.csv"
    path.write_bytes(raw)

    table = _read(path)
    assert table.num_rows == len(rows)
    spec = PromptSpec(template="$prompt")
    for (row_id, cell, broken), read in zip(rows, table.to_pylist(), strict=True):
        assert spec.row_id(read) == (row_id or spec.row_id({"prompt": read["prompt"]}))
        if broken:
            with pytest.raises(BatchInputError, match="'prompt' is not UTF-8 text"):
                spec.conversation(read)
        else:
            (message,) = spec.conversation(read)
            assert message.content == f"p:{cell}"


@pytest.mark.usefixtures("local_ray")
def test_a_job_reads_a_column_whose_type_changes_past_the_first_block(tmp_path: Path) -> None:
    from rig_ray.batch.run import pending
    from tests.fakes import EchoGenerator

    source = _numbered(b"z,p,many\n", tmp_path / "in.csv")
    left = pending(str(source), str(tmp_path / "out"), generator=EchoGenerator(model="e"))
    assert left == PAST_FIRST_BLOCK + 1
