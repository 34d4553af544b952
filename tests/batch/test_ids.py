"""Row ids as `plan_rows` assigns them (no Ray): a search over blocks of rows with and without
ids, of text or number ids, against the rule written out row by row."""

from __future__ import annotations

import json
import typing as t

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from rig_ray.batch.prepare import _Ids
from rig_ray.batch.prompts import PromptSpec, content_id

SPEC = PromptSpec().resolve(["id", "prompt"])


def expected_ids(blocks: list[list[dict[str, t.Any]]]) -> list[str]:
    """The rule: an id as text where the row has one (an empty text is none); else the hash
    of what the row holds, repeats numbered `#1`, `#2`, ... in input order."""
    repeats: dict[str, int] = {}
    ids = []
    for row in (row for block in blocks for row in block):
        value = row.get("id")
        if value is not None and value != "":
            if isinstance(value, bytes):
                value = value.decode("utf-8", "backslashreplace")
            elif isinstance(value, dict):  # a struct column: its JSON
                value = json.dumps(value, ensure_ascii=False)
            ids.append(str(value))
            continue
        base = content_id(SPEC.content_key(row))
        seen = repeats.get(base, 0)
        repeats[base] = seen + 1
        ids.append(f"{base}#{seen}" if seen else base)
    return ids


text_ids = st.one_of(st.none(), st.just(""), st.sampled_from(["a", "b", "7", "é"]))
prompts = st.sampled_from(["hello", "world"])


@settings(max_examples=150, deadline=None)
@given(
    blocks=st.lists(
        st.lists(st.fixed_dictionaries({"id": text_ids, "prompt": prompts}), max_size=5),
        min_size=1,
        max_size=4,
    ),
    kind=st.sampled_from(["text", "number", "binary", "struct", "absent"]),
)
def test_ids_follow_the_rule_whatever_the_blocks_hold(
    blocks: list[list[dict[str, t.Any]]], kind: str
) -> None:
    if kind == "number":  # number ids (a Parquet int column): read as their text
        blocks = [
            [{**row, "id": None if row["id"] in (None, "") else len(row["id"])} for row in block]
            for block in blocks
        ]
    elif kind == "binary":  # a binary column: its bytes as the UTF-8 they hold
        blocks = [
            [
                {
                    **row,
                    "id": None
                    if row["id"] is None
                    else (row["id"] + "\udcff").encode("utf-8", "surrogateescape"),
                }
                for row in block
            ]
            for block in blocks
        ]
    elif kind == "struct":  # a struct column: its JSON
        blocks = [
            [
                {**row, "id": None if row["id"] is None else {"key": row["id"], "n": 1}}
                for row in block
            ]
            for block in blocks
        ]
    elif kind == "absent":  # no id column at all
        blocks = [[{"prompt": row["prompt"]} for row in block] for block in blocks]
    ids = _Ids(SPEC)
    got: list[str] = []
    for block in blocks:
        types = {
            "text": pa.string(),
            "number": pa.int64(),
            "binary": pa.binary(),
            "struct": pa.struct([("key", pa.string()), ("n", pa.int64())]),
        }
        schema = pa.schema([("id", types[kind])] if kind != "absent" else []).append(
            pa.field("prompt", pa.string())
        )
        table = pa.Table.from_pylist(block, schema=schema)
        got.extend(ids.assign(table).to_pylist())
    assert got == expected_ids(blocks)
    rows = [row for block in blocks for row in block]
    for row, found in zip(rows, got, strict=True):  # the planner and `row_id`: one rule
        if row.get("id") not in (None, "", b""):
            assert SPEC.row_id(row) == found
