"""Generate, then judge, as one resumable job: `batch.run_pipeline` with two stages.

    python examples/judge.py [OUTPUT] [auto|swap|stream]     # default out/judge, auto
    python examples/judge.py OUTPUT MODE --transformers-only  # no vLLM: parse_as judge

Each question gets two answers from a pool of the bundled SmolLM2 on transformers and on
vLLM; a vLLM SmolLM2 then scores every answer with a {"score": int} JSON schema, which gives
a typed `score` column. A 135M model is a weak judge: the example shows the mechanism (ids,
parent ids, typed columns, resume per stage), not a good grader. Run it again and nothing
is generated or loaded; add a stage and only that stage runs.
(`examples/pipeline.yaml` is the same job for `rig-ray pipeline`.) With
`--transformers-only`, both answerers are SmolLM2 on transformers (float32 and bfloat16) and
the judge, on transformers too, is asked for `<score>N</score>`, read with `parse_as=Score`.
"""

from __future__ import annotations

import json
import sys
import typing as t

import rig_ray as rr
from rig_ray import batch

VLLM = (
    "vllm!smollm2-135m,dtype=float32,enforce_eager=true,max_model_len=512,"
    "gpu_memory_utilization=0.15"
)
TRANSFORMERS = "transformers!smollm2-135m,device=cpu,dtype=float32"

with open("examples/score.json") as file:
    SCORE = json.load(file)

STAGES = [
    batch.Stage(
        "answer",
        generators=[TRANSFORMERS, VLLM],
        system="Answer in one short sentence.",
        template="$question",
        num_generations=2,
        params=rr.GenerateParams(max_tokens=24, temperature=0.7),
        seed=0,
    ),
    batch.Stage(
        "judge",
        generator=VLLM,
        template="Question: $question\nAnswer: $text\n"
        "Score the answer from 1 (wrong) to 10 (right).",
        json_schema=SCORE,
        params=rr.GenerateParams(max_tokens=16, temperature=0),
    ),
]


class Score(rr.Model):
    """`<score>7</score>`"""

    score: int


TRANSFORMERS_STAGES = [
    STAGES[0].model_copy(
        update={"generators": (TRANSFORMERS, TRANSFORMERS.replace("float32", "bfloat16"))}
    ),
    batch.Stage(
        "judge",
        generator=TRANSFORMERS,
        system="You grade answers. Reply only with <score>N</score>, N from 1 to 10.",
        template="Question: $question\nAnswer: $text",
        parse_as=Score,
        params=rr.GenerateParams(max_tokens=16, temperature=0),
    ),
]


def main(output: str, gpu_sharing: str, transformers_only: bool = False) -> None:
    sharing = t.cast(t.Literal["auto", "stream", "swap"], gpu_sharing)
    stages = TRANSFORMERS_STAGES if transformers_only else STAGES
    summary = batch.run_pipeline(
        "examples/questions.jsonl", output, stages=stages, gpu_sharing=sharing
    )
    for line in summary.lines():
        print(line)
    table = batch.read_pipeline(output)
    for row in sorted(table.to_pylist(), key=lambda r: r["id"]):
        answer = " ".join(str(row["answer_text"]).split())
        print(f"{row['id']:8} score={row['score']!s:4} {row['question']} -> {answer}")


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "out/judge",
        sys.argv[2] if len(sys.argv) > 2 else "auto",
        "--transformers-only" in sys.argv,
    )
