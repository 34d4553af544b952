"""Structured batch jobs on real engines: `parse_as` on SmolLM2 under transformers. (vLLM's
JSON-schema decoding in a batch job is checked in test_batch_engines.py, in the same job as
its plain rows, so that one engine serves both.)"""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pytest

from rig_ray import Model
from rig_ray.batch import read_output, run

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("local_ray")]


class Answer(Model):
    value: str


FEW_SHOT = [
    {"role": "system", "content": "Answer with one word inside <answer></answer> tags."},
    {"role": "user", "content": "What color is the sky?"},
    {"role": "assistant", "content": "<answer>blue</answer>"},
]


@pytest.mark.slow
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
