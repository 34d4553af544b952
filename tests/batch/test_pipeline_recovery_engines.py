"""A pipeline on real engines killed (SIGKILL) in its second stage, then run again: the bundled
SmolLM2 answers on transformers (two generations per question) and judges on vLLM. The rerun
does not load or run the first stage again, and the second ends with exactly one row per
(parent, generation). Stage 2 is long by construction: its rows go one at a time, each runs
`JUDGE_TOKENS` engine steps (`ignore_eos`), and the job is killed once its first part is on
disk. The same kill on fake generators runs in the default suite
(tests/batch/test_pipeline_recovery.py); this one starts vLLM twice, so it is `slow`.

    python -m tests.batch.test_pipeline_recovery_engines SOURCE OUTPUT   # the killed job
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from rig_ray.batch import Stage, read_output, read_pipeline, run_pipeline
from rig_ray.generator.params import GenerateParams
from tests.batch.test_pipeline_recovery import judged_once_each, kill_in_stage_two

pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = 4
JUDGE_TOKENS = 64
"""Engine steps of every stage-2 row: each outlasts the kill that follows the first part."""
VLLM = (
    "vllm!smollm2-135m,dtype=float32,enforce_eager=true,max_model_len=512,"
    "gpu_memory_utilization=0.15,temperature=0"
)
TRANSFORMERS = "transformers!smollm2-135m,device=cpu,dtype=float32,temperature=0,max_tokens=8"


def engine_stages() -> list[Stage]:
    return [
        Stage("answer", generator=TRANSFORMERS, template="$question", num_generations=2, seed=0),
        Stage(
            "judge",
            generator=VLLM,
            template="Question: $question\nAnswer: $text\nIs the answer right?",
            params=GenerateParams(max_tokens=JUDGE_TOKENS, extra={"ignore_eos": True}),
            batch_size=1,
            max_concurrent_batches=1,
            rows_per_part=1,
            seconds_per_part=0.1,
        ),
    ]


def test_killed_in_stage_two_on_real_engines_resumes_stage_two_only(
    tmp_path: Path, local_ray: object
) -> None:
    source = tmp_path / "q.jsonl"
    source.write_text(
        "".join(
            json.dumps({"id": f"q{n}", "question": f"What is {n} plus {n}?"}) + "\n"
            for n in range(QUESTIONS)
        )
    )
    out = tmp_path / "out"
    kill_in_stage_two(
        ["tests.batch.test_pipeline_recovery_engines", str(source), str(out)],
        out,
        dict(os.environ),
        tmp_path / "job.log",
        within_s=900,
    )
    total = 2 * QUESTIONS
    answers = read_output(str(out / "answer"))
    assert answers.num_rows == total  # stage 1 was complete before stage 2 began
    written = read_output(str(out / "judge")).num_rows
    assert 0 < written < total  # killed during stage 2

    summary = run_pipeline(
        str(source), str(out), stages=engine_stages(), gpu_sharing="swap", progress=False
    )
    assert not summary.stage("answer").loaded  # stage 1 neither loaded nor ran again
    assert summary.stage("answer").generations_written == 0
    assert summary.stage("judge").generations_written == total - written
    rows = judged_once_each(out, QUESTIONS)
    assert all(row["error"] is None and row["text"] for row in rows)
    assert read_pipeline(str(out)).num_rows == total


if __name__ == "__main__":
    run_pipeline(
        sys.argv[1], sys.argv[2], stages=engine_stages(), gpu_sharing="swap", progress=False
    )
