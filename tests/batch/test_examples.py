"""The worked example of the README: examples/books.py on the embedded model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def test_books_example_writes_a_typed_table(tmp_path: Path) -> None:
    out = tmp_path / "books"
    done = subprocess.run(
        [sys.executable, "examples/books.py", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = pq.read_table(out)
    assert table.schema.field("year").type == pa.int64()
    assert table.schema.field("parse_retries").type == pa.int32()
    rows = table.to_pylist()
    assert sorted(r["id"] for r in rows) == ["dune", "frank", "gatsby", "hobbit", "moby", "pride"]
    parsed = [r for r in rows if r["error"] is None]
    assert parsed, [r["error"] for r in rows]  # the small model gets most of them
    for row in parsed:
        assert row["title"] and row["author"] and 1800 < row["year"] < 2000
    for row in rows:
        if row["error"] is not None:
            assert row["error"].startswith("ParseRetriesExhaustedError")
            assert row["year"] is None and row["parse_retries"] == 2
