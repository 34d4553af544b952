"""A pipeline run in a process of its own, for the test that kills it: python -m
tests.batch.pipeline_job SOURCE OUTPUT LOGS."""

from __future__ import annotations

import sys
from pathlib import Path

from rig_ray.batch import Stage, run_pipeline
from tests.batch.pipeline_members import SCORE_SCHEMA, Answerer, Judge


def job_stages(logs: Path, judge_seconds: float = 0.0) -> list[Stage]:
    return [
        Stage(
            "answer",
            generators=[
                Answerer(model="a", log=str(logs / "answer.log")),
                Answerer(model="b", log=str(logs / "answer.log")),
            ],
            template="Answer: $question",
            num_generations=2,
        ),
        Stage(
            "judge",
            generator=Judge(model="j", log=str(logs / "judge.log"), seconds=judge_seconds),
            template="Q: $question A: $text",
            json_schema=SCORE_SCHEMA,
            batch_size=1,
            max_concurrent_batches=1,
            rows_per_part=1,
            seconds_per_part=0.5,
        ),
    ]


if __name__ == "__main__":
    source, output, logs = sys.argv[1:4]
    run_pipeline(source, output, stages=job_stages(Path(logs), 2.0), gpu_sharing="swap")
