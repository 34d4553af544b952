"""Pipelines on real engines: the bundled SmolLM2 answering in a pool of transformers and vLLM
(two generations per question), then judged by vLLM SmolLM2 with a {"score": int} schema.

Run the vLLM tests under `flock /tmp/vllm.lock` on a shared machine."""

from __future__ import annotations

import json
import os
import time
import typing as t
from pathlib import Path

import pyarrow as pa
import pytest

from rig_ray import PipelineError
from rig_ray.batch import Stage, read_output, read_pipeline, run_pipeline
from tests.polling import Polling

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("local_ray")]

VLLM = (
    "vllm!smollm2-135m,dtype=float32,enforce_eager=true,max_model_len=512,"
    "gpu_memory_utilization=0.15,temperature=0"
)
TRANSFORMERS = "transformers!smollm2-135m,device=cpu,dtype=float32,temperature=0"
SCORE = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}},
    "required": ["score"],
    "additionalProperties": False,
}
QUESTIONS = {"sky": "What color is the sky?", "ice": "What is frozen water called?"}


def pipeline_stages() -> list[Stage]:
    return [
        Stage(
            "answer",
            generators=[f"{TRANSFORMERS},max_tokens=12", f"{VLLM},max_tokens=12"],
            template="$question",
            system="Answer in one short sentence.",
            num_generations=2,
            seed=0,
        ),
        Stage(
            "judge",
            generator=f"{VLLM},max_tokens=16",
            template="Question: $question\nAnswer: $text\nScore the answer from 1 to 10.",
            json_schema=SCORE,
        ),
    ]


class Sampler(Polling):
    """The processes under this one (its local Ray), sampled every 0.1 s with the time."""

    def __init__(self) -> None:
        import psutil

        super().__init__()
        self.samples: list[tuple[float, set[int]]] = []
        self._me = psutil.Process(os.getpid())

    def sample(self) -> None:
        now = time.time()
        self.samples.append((now, {p.pid for p in self._me.children(recursive=True)}))


def write_questions(path: Path) -> Path:
    path.write_text(
        "".join(json.dumps({"id": k, "question": q}) + "\n" for k, q in QUESTIONS.items())
    )
    return path


def check_result(out: Path) -> pa.Table:
    answers = read_output(str(out / "answer"))
    assert answers.num_rows == 4 and answers.column("error").null_count == 4
    generators = {row["generator"].split("!")[0] for row in answers.to_pylist()}
    assert generators == {"transformers", "vllm"}  # the pool split each row's generations
    judged = read_output(str(out / "judge"))
    assert judged.num_rows == 4
    assert judged.schema.field("score").type == pa.int64()
    assert sorted(judged.column("id").to_pylist()) == ["ice/0", "ice/1", "sky/0", "sky/1"]
    for row in judged.to_pylist():
        assert row["parent_id"] == row["id"].split("/")[0]
        assert row["error"] is None, row["error"]
        assert row["score"] == json.loads(row["text"])["score"]  # typed column from the JSON
        assert 1 <= row["score"] <= 10
    final = read_pipeline(str(out))
    assert final.num_rows == 4
    for row in final.to_pylist():
        assert row["question"] == QUESTIONS[row["parent_id"]]
        assert row["answer_text"] and row["answer_generator"].startswith(("vllm", "transformers"))
    return final


@pytest.mark.slow
def test_swap_two_stages_on_transformers(tmp_path: Path) -> None:
    """A pipeline on transformers alone: two generations per question on SmolLM2, then a
    second transformers stage over each; stage one's actors are gone before stage two loads."""
    source = write_questions(tmp_path / "q.jsonl")
    stages = [
        Stage(
            "answer",
            generator=f"{TRANSFORMERS},max_tokens=8",
            template="$question",
            num_generations=2,
            seed=0,
        ),
        Stage("echo", generator=f"{TRANSFORMERS},max_tokens=4", template="Repeat: $text"),
    ]
    with Sampler() as sampler:
        summary = run_pipeline(
            str(source), str(tmp_path / "out"), stages=stages, gpu_sharing="swap", progress=False
        )
    echoed = read_output(str(tmp_path / "out" / "echo"))
    assert sorted(echoed.column("id").to_pylist()) == ["ice/0", "ice/1", "sky/0", "sky/1"]
    assert echoed.column("error").null_count == 4
    final = read_pipeline(str(tmp_path / "out"))
    assert final.num_rows == 4
    for row in final.to_pylist():
        assert row["question"] == QUESTIONS[row["parent_id"]] and row["answer_text"]
    answer, echo = summary.stage("answer").engines, summary.stage("echo").engines
    assert answer.unload_finished is not None and echo.load_started is not None
    assert answer.unload_finished <= echo.load_started
    assert len(answer.actor_pids) == 1
    after = [pids for when, pids in sampler.samples if when >= echo.load_started]
    assert after and all(not set(answer.actor_pids) & pids for pids in after)


@pytest.mark.slow
def test_swap_two_stages_on_vllm_and_transformers(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    source = write_questions(tmp_path / "q.jsonl")
    with Sampler() as sampler:
        summary = run_pipeline(
            str(source), str(tmp_path / "out"), stages=pipeline_stages(), gpu_sharing="swap"
        )
    check_result(tmp_path / "out")
    answer, judge = summary.stage("answer").engines, summary.stage("judge").engines
    assert answer.unload_finished is not None and judge.load_started is not None
    assert answer.unload_finished <= judge.load_started
    stage_one = set(answer.actor_pids) | set(answer.engine_pids)
    assert len(answer.actor_pids) == 2 and answer.engine_pids  # vLLM's engine core under it
    assert any(stage_one & pids for _, pids in sampler.samples)  # seen while it ran
    after = [pids for when, pids in sampler.samples if when >= judge.load_started]
    assert after and all(not stage_one & pids for pids in after)  # gone before stage 2 loads
    assert summary.stage("judge").loaded and summary.gpu_sharing == "swap"


@pytest.mark.slow
def test_stream_two_stages_on_vllm_and_transformers(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    source = write_questions(tmp_path / "q.jsonl")
    summary = run_pipeline(
        str(source), str(tmp_path / "out"), stages=pipeline_stages(), gpu_sharing="stream"
    )
    check_result(tmp_path / "out")
    answer, judge = summary.stage("answer").engines, summary.stage("judge").engines
    assert answer.load_finished is not None and judge.load_finished is not None
    assert judge.load_finished < t.cast(float, answer.unload_started)  # loaded side by side
    assert list((tmp_path / "out" / "_inputs" / "judge").rglob("*.parquet"))  # part by part
    changes_after_a_run(source, tmp_path / "out")


def changes_after_a_run(source: Path, out: Path) -> None:
    """On the finished folder: a changed judge template is refused naming the stage, before
    anything loads; a stage added at the end runs alone."""
    answer_parts = sorted(p.name for p in (out / "answer").iterdir())
    answer, judge = pipeline_stages()
    changed = judge.model_copy(update={"template": "Rate this answer: $text"})
    with pytest.raises(PipelineError, match=r"stage 'judge'.*template") as refused:
        run_pipeline(str(source), str(out), stages=[answer, changed], progress=False)
    assert refused.value.stage == "judge"
    assert sorted(p.name for p in (out / "answer").iterdir()) == answer_parts
    echo = Stage("echo", generator=f"{TRANSFORMERS},max_tokens=4", template="Repeat: $text")
    grown = run_pipeline(
        str(source), str(out), stages=[answer, judge, echo], gpu_sharing="swap", progress=False
    )
    assert not grown.stage("answer").loaded and not grown.stage("judge").loaded
    assert grown.stage("answer").generations_written == 0
    assert grown.stage("judge").generations_written == 0
    assert grown.stage("echo").loaded and grown.stage("echo").generations_written == 4
    final = read_pipeline(str(out))
    assert final.num_rows == 4 and {"judge_score", "answer_text"} <= set(final.column_names)
    assert sorted(final.column("parent_id").to_pylist()) == ["ice/0", "ice/1", "sky/0", "sky/1"]
