"""Structured batch outputs with fake generators: typed columns, clashes, parse retries that
re-send only the unparsed rows, rows that never parse, JSON-schema columns, and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rig_ray.batch import OUTPUT_COLUMNS, read_output, run
from rig_ray.errors import BatchInputError, UnsupportedParamsError
from tests.batch.members import rows
from tests.batch.structured_members import (
    JSONReplies,
    Label,
    Record,
    Stubborn,
    calls,
    record_xml,
)
from tests.fakes import CallbackGenerator

pytestmark = pytest.mark.usefixtures("local_ray")

FAST = {"num_cpus": 0.25, "progress": False, "template": "$topic"}


def _by_id(folder: Path) -> dict[str, dict]:
    return {row["id"]: row for row in read_output(str(folder)).to_pylist()}


def test_parsed_fields_become_typed_columns_with_clashes_prefixed(tmp_path: Path) -> None:
    source = rows(tmp_path / "in.jsonl", 3)
    generator = CallbackGenerator(
        model="xml", callback=lambda conv, _: record_xml(int(conv[-1].content.split()[-1]))
    )
    summary = run(str(source), str(tmp_path / "out"), generator=generator, parse_as=Record, **FAST)
    assert (summary.generations_written, summary.failed) == (3, 0)
    table = pq.read_table(summary.parts[0])
    fields = {f.name: f.type for f in table.schema}
    # after the generation columns: the parsed ones (text and topic clash), then inputs
    assert table.column_names == [
        *OUTPUT_COLUMNS,
        "count",
        "score",
        "ok",
        "parsed_text",
        "parsed_topic",
        "tags",
        "place",
        "note",
        "parse_retries",
        "topic",
    ]
    assert fields["count"] == pa.int64() and fields["score"] == pa.float64()
    assert fields["ok"] == pa.bool_() and fields["parsed_text"] == pa.string()
    assert fields["tags"] == pa.list_(pa.string())
    assert fields["place"] == pa.struct([("city", pa.string()), ("country", pa.string())])
    assert fields["parse_retries"] == pa.int32()
    row = _by_id(tmp_path / "out")["r2"]
    assert (row["count"], row["score"], row["ok"]) == (2, 2.5, True)
    assert (row["parsed_text"], row["parsed_topic"], row["topic"]) == ("row 2", "t2", "topic 2")
    assert row["tags"] == ["a", "b2"] and row["place"] == {"city": "Paris", "country": "FR"}
    assert row["note"] is None and row["parse_retries"] == 0 and row["error"] is None
    # text is the reply pretty-synced, as chats keep it: the block re-written as indented XML
    assert row["text"].startswith("Here it is: <record>\n  <count>2</count>")


def test_retries_resend_only_unparsed_rows_one_batch_per_round(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    needs = {"a": 0, "b": 1, "c": 2, "d": 0, "e": 1, "f": "never"}
    with source.open("w") as out:
        for row_id, need in needs.items():
            out.write(json.dumps({"id": row_id, "topic": f"label this, needs {need}"}) + "\n")
    log = tmp_path / "calls.log"
    summary = run(
        str(source),
        str(tmp_path / "out"),
        generator=Stubborn(model="stubborn", log=str(log)),
        parse_as=Label,
        max_parse_retries=2,
        batch_size=8,
        **FAST,
    )
    # round 0: all six; round 1: b, c, e, f; round 2: c, f
    assert calls(log) == [6, 4, 2]
    got = _by_id(tmp_path / "out")
    assert {k: got[k]["parse_retries"] for k in needs} == {
        "a": 0,
        "b": 1,
        "c": 2,
        "d": 0,
        "e": 1,
        "f": 2,
    }
    assert all(got[k]["value"] == "positive" and got[k]["error"] is None for k in "abcde")
    assert summary.failed == 1
    never = got["f"]
    assert never["value"] is None and never["text"] == "I cannot say (attempt 3)."
    assert never["error"].startswith("ParseRetriesExhaustedError: Label did not parse after 2")
    assert "no <label> block found" in never["error"]
    # tokens of every round are counted
    assert got["c"]["output_tokens"] == 4 + 4 + 1  # "no label yet (n)" twice, then the label


def test_zero_retries_and_resume_keep_the_parsed_columns(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    with source.open("w") as out:
        for row_id, need in {"a": 0, "b": 1}.items():
            out.write(json.dumps({"id": row_id, "topic": f"needs {need}"}) + "\n")
    log = tmp_path / "calls.log"
    options = {"generator": Stubborn(model="s", log=str(log)), "parse_as": Label, **FAST}
    first = run(str(source), str(tmp_path / "out"), max_parse_retries=0, **options)
    assert first.failed == 1 and calls(log) == [2]
    with source.open("a") as out:
        out.write(json.dumps({"id": "c", "topic": "needs 0"}) + "\n")
    second = run(str(source), str(tmp_path / "out"), max_parse_retries=0, **options)
    assert (second.generations_written, second.skipped) == (1, 2)
    table = read_output(str(tmp_path / "out"))
    assert table.schema.field("value").type == pa.string()
    got = {r["id"]: (r["value"], r["parse_retries"]) for r in table.to_pylist()}
    assert got == {"a": ("positive", 0), "b": (None, 0), "c": ("positive", 0)}
    plain = {k: v for k, v in options.items() if k != "parse_as"}
    with pytest.raises(BatchInputError, match="structured output"):  # the manifest refuses
        run(str(source), str(tmp_path / "out"), **plain)


def test_json_schema_properties_become_typed_columns(tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "where": {"$ref": "#/$defs/Where"},
            "id": {"type": "number"},
        },
        "$defs": {"Where": {"type": "object", "properties": {"lat": {"type": "number"}}}},
    }
    replies = {
        "topic 0": {"name": "x", "age": 3, "tags": ["t"], "where": {"lat": 1.5}, "id": 7},
        "topic 1": "not json at all",
        "topic 2": {"name": "y", "age": "old"},  # wrong type: nulled, with why
    }
    source = rows(tmp_path / "in.jsonl", 3)
    generator = JSONReplies(model="json", replies=replies)
    summary = run(
        str(source), str(tmp_path / "out"), generator=generator, json_schema=schema, **FAST
    )
    assert summary.failed == 2
    table = read_output(str(tmp_path / "out"))
    fields = {f.name: f.type for f in table.schema}
    assert fields["age"] == pa.int64() and fields["tags"] == pa.list_(pa.string())
    assert fields["where"] == pa.struct([("lat", pa.float64())])
    assert fields["parsed_id"] == pa.float64() and "parse_retries" not in fields
    got = _by_id(tmp_path / "out")
    assert (got["r0"]["name"], got["r0"]["age"], got["r0"]["where"]) == ("x", 3, {"lat": 1.5})
    assert got["r1"]["error"].startswith("ParseError: the reply is not JSON")
    assert got["r1"]["text"] == "not json at all" and got["r1"]["name"] is None
    assert "'age' does not fit int64" in got["r2"]["error"] and got["r2"]["name"] is None
    # the schema reached the generator with the params
    assert generator.params.json_schema is None  # the driver's copy is untouched


def test_generators_that_cannot_honour_a_schema_are_refused_up_front(tmp_path: Path) -> None:
    source = rows(tmp_path / "in.jsonl", 1)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    with pytest.raises(UnsupportedParamsError, match="TransformersGenerator"):
        run(
            str(source),
            str(tmp_path / "out"),
            generator="transformers!smollm2-135m",
            json_schema=schema,
            **FAST,
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"parse_as": Label, "json_schema": {"type": "object"}}, "not both"),
        ({"parse_as": dict}, "rig_ray.Model subclass"),
        ({"json_schema": {"type": "array"}}, "'properties'"),
        ({"json_schema": "schema.json"}, "dict or a pydantic model class"),
        ({"parse_as": Label, "max_parse_retries": -1}, ">= 0"),
    ],
)
def test_bad_structured_options(tmp_path: Path, options: dict, match: str) -> None:
    source = rows(tmp_path / "in.jsonl", 1)
    generator = JSONReplies(model="json", replies={})
    with pytest.raises(BatchInputError, match=match):
        run(str(source), str(tmp_path / "out"), generator=generator, **options, **FAST)
