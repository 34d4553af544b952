"""Batch jobs on real engines: the embedded SmolLM2 on transformers, and on vLLM (plain and
JSON-schema rows in one job, one engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rig_ray.batch import run
from tests.batch.members import output_rows, rows

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("local_ray")]


@pytest.mark.slow
def test_smollm2_on_transformers_in_two_replicas(tmp_path: Path, smollm2_path: Path) -> None:
    source = rows(tmp_path / "in.jsonl", 8)
    summary = run(
        str(source),
        str(tmp_path / "out"),
        generator="transformers!smollm2-135m,max_tokens=8,temperature=0",
        template="Write one word about $topic.",
        system="You answer briefly.",
        replicas=2,
        num_cpus=0.5,
        batch_size=2,
        progress=False,
    )
    assert (summary.generations_written, summary.failed) == (8, 0)
    got = output_rows(tmp_path / "out")
    assert sorted(r["id"] for r in got) == sorted(f"r{n}" for n in range(8))
    for row in got:
        assert row["text"].strip() and row["error"] is None
        assert row["generator"] == "transformers!smollm2-135m,temperature=0.0,max_tokens=8"
        assert row["model"] == "smollm2-135m" and row["stop_reason"] in {"stop", "length"}
        assert row["input_tokens"] > 10 and 0 < row["output_tokens"] <= 8
    assert summary.output_tokens == sum(r["output_tokens"] for r in got)


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


def test_one_vllm_job_runs_plain_rows_and_json_schema_rows(tmp_path: Path) -> None:
    """One vLLM engine for both paths: plain rows (two generations each, 4 tokens, row by
    row into the engine) and rows whose params constrain decoding to a JSON schema."""
    pytest.importorskip("vllm")
    plain = {"max_tokens": 4, "extra": {"ignore_eos": True}}
    schema = {"max_tokens": 96, "json_schema": CITY_SCHEMA}
    source = tmp_path / "in.jsonl"
    with source.open("w") as out:
        for key, topic, params in [
            ("p0", "rivers", plain),
            ("p1", "bread", plain),
            ("j0", "Describe the city of Paris as JSON.", schema),
            ("j1", "Describe the city of Lima as JSON.", schema),
        ]:
            out.write(json.dumps({"id": key, "topic": topic, "params": json.dumps(params)}) + "\n")
    summary = run(
        str(source),
        str(tmp_path / "out"),
        generator="vllm!smollm2-135m,enforce_eager=true,max_model_len=1024,temperature=0",
        template="$topic",
        params_column="params",
        num_generations=2,
        num_cpus=1,
        progress=False,
    )
    assert (summary.generations_written, summary.failed) == (8, 0)
    got = output_rows(tmp_path / "out")
    assert sorted((r["id"], r["generation_index"]) for r in got) == [
        (key, g) for key in ("j0", "j1", "p0", "p1") for g in range(2)
    ]
    for row in got:
        assert row["error"] is None and row["text"] is not None
        assert "request_id" in json.loads(row["metadata"])  # the engine's details travel along
        if row["id"].startswith("p"):
            assert row["output_tokens"] == 4 and row["stop_reason"] == "length"
        else:
            reply = json.loads(row["text"])  # every reply is JSON of the schema
            assert set(reply) == set(CITY_SCHEMA["properties"]) and row["stop_reason"] == "stop"
            assert isinstance(reply["capital"], bool) and isinstance(reply["population"], int)
            assert len(reply["city"]) <= 20
