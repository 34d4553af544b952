"""A fuzz test of reading JSON Lines input (no Ray): random objects written as lines (ids of
every JSON type, keys and strings of any code point, CRLF endings, a byte order mark), and
random bytes. Valid files give one row per line with the id as written; anything else is a
`BatchInputError` naming the line, never another exception."""

from __future__ import annotations

import json
import os
import typing as t

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig_ray.batch.json_input import json_rows
from rig_ray.errors import BatchInputError
from tests.serve.test_fuzz import texts, values

EXAMPLES = int(os.environ.get("RIG_RAY_FUZZ_EXAMPLES", 200))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

ids = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
    st.booleans(),
)
objects = st.dictionaries(texts, values, max_size=4).flatmap(
    lambda row: st.one_of(st.just(row), ids.map(lambda found: {**row, "id": found}))
)


def _valid(value: t.Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError):
        return False
    return True


@SETTINGS
@given(rows=st.lists(objects, min_size=1, max_size=6), ascii_only=st.booleans(), bom=st.booleans())
def test_each_line_is_one_row_with_its_id_as_written(
    rows: list[dict[str, t.Any]], ascii_only: bool, bom: bool
) -> None:
    lines = [json.dumps(row, ensure_ascii=ascii_only) for row in rows]
    data = ("\ufeff" if bom else "") + "\r\n".join(lines) + "\n"
    raw = data.encode("utf-8", errors="surrogatepass")
    if not all(_valid(row) for row in rows):  # a lone surrogate: refused, naming where
        try:
            json_rows(raw, "id")
        except BatchInputError as refused:
            assert "line" in str(refused) or "row" in str(refused)
        return  # (read, a surrogate escape reaches Arrow, which names its row)
    read = json_rows(raw, "id")
    assert len(read) == len(rows)
    for row, found in zip(rows, read, strict=True):
        assert set(found) == set(row)
        if "id" in row and isinstance(row["id"], str):
            assert found["id"] == row["id"]
        elif "id" in row and row["id"] is not None and not isinstance(row["id"], bool):
            assert found["id"] == json.dumps(row["id"])  # a number keeps the text it was written as


@SETTINGS
@given(
    data=st.binary(max_size=200)
    | st.lists(values, max_size=4).map(lambda v: json.dumps(v).encode())
)
def test_any_bytes_are_rows_or_an_error_naming_the_line(data: bytes) -> None:
    try:
        json_rows(data, "id")
    except BatchInputError as refused:
        assert "line" in str(refused) or "row" in str(refused) or "JSON array" in str(refused)
