"""The stages of the stateful pipeline test, and its driver for runs that get killed:
python -m tests.batch.pipeline_search_job SPEC.json (SPEC: source, output, mode, chain)."""

from __future__ import annotations

import json
import sys
import typing as t
from pathlib import Path

from rig_ray.batch import Stage, run_pipeline
from tests.batch.pipeline_members import SCORE_SCHEMA, Answerer, FailingAnswerer, Judge

STAGE_NAMES = ("answer", "judge", "echo")
TEMPLATES = {
    "answer": "Answer: $question",
    "judge": "Q: $question A: $text",
    "echo": "$score|$answer_text",
}


def chain(
    logs: str,
    *,
    stages: int = 2,
    answers: int = 1,
    keep: bool = False,
    seconds: float = 0.0,
    operational: dict[str, t.Any] | None = None,
    changed: str | None = None,
) -> list[Stage]:
    """The first `stages` of: a pool of two answerers (fail on FAIL) making `answers`
    generations a question, a judge with a {"score": int} schema (no JSON on BAD), and an echo
    stage (`on_error="keep"` if `keep`). Every batch sleeps `seconds`; `operational` (settings
    that change no output) goes to every stage; `changed` names a stage whose template
    differs from the one it was made with."""
    options = dict(operational or {})
    templates = {
        name: template + (" (changed)" if name == changed else "")
        for name, template in TEMPLATES.items()
    }
    made = [
        Stage(
            "answer",
            generators=[
                FailingAnswerer(model=m, log=f"{logs}/answer.log", seconds=seconds) for m in "ab"
            ],
            template=templates["answer"],
            num_generations=answers,
            **options,
        ),
        Stage(
            "judge",
            generator=Judge(model="j", log=f"{logs}/judge.log", seconds=seconds),
            template=templates["judge"],
            json_schema=SCORE_SCHEMA,
            max_parse_retries=0,
            **options,
        ),
        Stage(
            "echo",
            generator=Answerer(model="e", log=f"{logs}/echo.log", seconds=seconds),
            template=templates["echo"],
            on_error="keep" if keep else "skip",
            **options,
        ),
    ]
    return made[:stages]


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    run_pipeline(
        spec["source"],
        spec["output"],
        stages=chain(**spec["chain"]),
        gpu_sharing=spec["mode"],
        progress=False,
    )
