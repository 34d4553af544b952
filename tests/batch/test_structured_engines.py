"""Structured batch jobs on real engines: `--json-schema` on SmolLM2 under vLLM (every row valid
JSON, typed columns), and `parse_as` on SmolLM2 under transformers."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pyarrow as pa
import pytest

from rig_ray import Model
from rig_ray.batch import read_output, run
from rig_ray.cli import main

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("local_ray")]

CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "country": {"type": "string", "maxLength": 20},
        "capital": {"type": "boolean"},
        "population": {"type": "integer", "minimum": 0, "maximum": 99999999},
    },
    "required": ["city", "country", "capital", "population"],
    "additionalProperties": False,
}


def test_json_schema_job_on_vllm_gives_valid_json_and_typed_columns(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    schema_file = tmp_path / "city.json"
    schema_file.write_text(json.dumps(CITY_SCHEMA))
    source = tmp_path / "cities.jsonl"
    source.write_text("".join(json.dumps({"id": c, "topic": c}) + "\n" for c in ["Paris", "Lima"]))
    code = main(
        ["batch", str(source), str(tmp_path / "out"), "--generator",
         "vllm!smollm2-135m,enforce_eager=true,max_model_len=1024,max_tokens=96,temperature=0",
         "--template", "Describe the city of $topic as JSON.", "--json-schema",
         str(schema_file), "--num-cpus", "1", "--quiet"]
    )  # fmt: skip
    table = read_output(str(tmp_path / "out"))
    assert code == 0, table.column("error").to_pylist()
    assert table.schema.field("capital").type == pa.bool_()
    assert table.schema.field("population").type == pa.int64()
    assert table.schema.field("city").type == pa.string()
    assert table.num_rows == 2
    for row in table.to_pylist():
        reply = json.loads(row["text"])  # every reply is JSON of the schema
        assert set(reply) == set(CITY_SCHEMA["properties"]) and row["error"] is None
        assert isinstance(reply["capital"], bool) and isinstance(reply["population"], int)
        assert (row["city"], row["capital"], row["population"]) == (
            reply["city"],
            reply["capital"],
            reply["population"],
        )
        assert len(reply["city"]) <= 20


class Answer(Model):
    value: str


FEW_SHOT = [
    {"role": "system", "content": "Answer with one word inside <answer></answer> tags."},
    {"role": "user", "content": "What color is the sky?"},
    {"role": "assistant", "content": "<answer>blue</answer>"},
]


def test_parse_as_job_on_transformers(tmp_path: Path) -> None:
    questions = {"grass": "What color is grass?", "ice": "What is frozen water called?"}
    source = tmp_path / "questions.jsonl"
    with source.open("w") as out:
        for key, question in questions.items():
            conversation = [*FEW_SHOT, {"role": "user", "content": question}]
            out.write(json.dumps({"id": key, "messages": conversation}) + "\n")
    summary = run(
        str(source),
        str(tmp_path / "out"),
        generator="transformers!smollm2-135m,max_tokens=16,temperature=0",
        parse_as=Answer,
        max_parse_retries=1,
        num_cpus=1,
        progress=False,
    )
    got: dict[str, dict[str, t.Any]] = {
        r["id"]: r for r in read_output(str(tmp_path / "out")).to_pylist()
    }
    assert set(got) == set(questions) and summary.generations_written == 2
    for row in got.values():
        if row["error"] is None:  # parsed: the column holds the block's text
            assert row["value"] and f"<answer>{row['value']}</answer>" in row["text"]
            assert row["parse_retries"] in (0, 1)
        else:  # never parsed: the last reply is kept, and the error says why
            assert row["error"].startswith("ParseRetriesExhaustedError")
            assert row["value"] is None and row["parse_retries"] == 1 and row["text"]
    assert got["grass"]["value"] == "green"  # greedy SmolLM2 follows the example
