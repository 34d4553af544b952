"""Batch jobs on real engines: the embedded SmolLM2 on transformers, a tiny Llama on vLLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rig_ray as rr
from rig_ray.batch import run
from tests.batch.members import output_rows, rows

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("local_ray")]


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


def test_tiny_llama_on_vllm_with_two_generations_each(
    tmp_path: Path, tiny_llama_path: Path
) -> None:
    pytest.importorskip("vllm")
    generator = rr.VLLMGenerator(
        model=str(tiny_llama_path),
        dtype="bfloat16",
        enforce_eager=True,
        max_model_len=256,
        params=rr.GenerateParams(max_tokens=4, temperature=0),
    )
    source = rows(tmp_path / "in.jsonl", 3)
    summary = run(
        str(source),
        str(tmp_path / "out"),
        generator=generator,
        template="$topic",
        num_generations=2,
        num_cpus=1,
        progress=False,
    )
    assert (summary.generations_written, summary.failed) == (6, 0)
    got = output_rows(tmp_path / "out")
    assert sorted((r["id"], r["generation_index"]) for r in got) == [
        (f"r{n}", g) for n in range(3) for g in range(2)
    ]
    for row in got:
        assert row["error"] is None and row["output_tokens"] == 4
        assert row["stop_reason"] == "length" and row["text"] is not None
        assert "request_id" in json.loads(row["metadata"])  # the engine's details travel along
