"""Generate, then judge, three ways: two separate `rig-ray batch` runs, a pipeline in swap
mode, and a pipeline in stream mode. Prints the wall time of each and, for swap, the seconds
spent unloading and loading engines between the stages.

    flock /tmp/vllm.lock python benchmarks/pipeline.py [--questions 8] [--max-tokens 16]
    python benchmarks/pipeline.py --transformers-only      # no vLLM: a plain-text judge

Each way runs in a process of its own (its own local Ray), as a user would run it. The
answer stage is a pool of SmolLM2 on transformers and on vLLM (two generations per
question); the judge is SmolLM2 on vLLM with a {"score": int} JSON schema. With
`--transformers-only` both answerers and the judge are SmolLM2 on transformers (two
members of the pool, float32 and bfloat16) and the judge replies in plain text.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VLLM = (
    "vllm!smollm2-135m,dtype=float32,enforce_eager=true,max_model_len=512,"
    "gpu_memory_utilization=0.15,temperature=0"
)
TRANSFORMERS = "transformers!smollm2-135m,device=cpu,dtype=float32,temperature=0"
SCORE = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}},
    "required": ["score"],
}
ANSWER = "$question"
JUDGE = "Question: $question\nAnswer: $text\nScore the answer from 1 to 10."
TOPICS = ["the sky", "ice", "Paris", "spiders", "the sea", "bread", "the moon", "trees"]


def questions(path: Path, count: int) -> None:
    with path.open("w") as out:
        for n in range(count):
            row = {"id": f"q{n}", "question": f"Say one thing about {TOPICS[n % len(TOPICS)]}."}
            out.write(json.dumps(row) + "\n")


def engines(transformers_only: bool) -> tuple[list[str], str, bool]:
    """The answer stage's generators, the judge's, and whether the judge gets the schema."""
    if transformers_only:
        other = TRANSFORMERS.replace("dtype=float32", "dtype=bfloat16")
        return [TRANSFORMERS, other], TRANSFORMERS, False
    return [TRANSFORMERS, VLLM], VLLM, True


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "rig_ray.cli", *args], check=True)


def separate(work: Path, max_tokens: int, transformers_only: bool) -> dict[str, float]:
    """Stage 1 with `rig-ray batch`, its rows made into the judge's input by hand, stage 2."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = work / "score.json"
    schema.write_text(json.dumps(SCORE))
    answerers, judge, schema_on = engines(transformers_only)
    started = time.monotonic()
    cli("batch", str(work / "q.jsonl"), str(work / "sep-answer"), "--generator", answerers[0],
        "--generator", answerers[1], "--template", ANSWER, "--num-generations", "2",
        "--max-tokens", str(max_tokens), "--quiet")  # fmt: skip
    answers = pq.read_table(work / "sep-answer")
    answers = answers.filter(pc.is_null(answers.column("error")))
    ids = pc.binary_join_element_wise(
        answers.column("id"), pc.cast(answers.column("generation_index"), pa.string()), "/"
    )
    judge_input = pa.table(
        {"id": ids, "question": answers.column("question"), "text": answers.column("text")}
    )
    pq.write_table(judge_input, work / "judge-input.parquet")
    structured = ["--json-schema", str(schema)] if schema_on else []
    cli("batch", str(work / "judge-input.parquet"), str(work / "sep-judge"), "--generator", judge,
        "--template", JUDGE, *structured, "--max-tokens", "16", "--quiet")  # fmt: skip
    return {"wall_s": time.monotonic() - started}


def pipeline(work: Path, mode: str, max_tokens: int, transformers_only: bool) -> dict[str, float]:
    """The same job as one `run_pipeline`, in a process of its own."""
    started = time.monotonic()
    only = ["--transformers-only"] if transformers_only else []
    done = subprocess.run(
        [sys.executable, __file__, "--run-pipeline", mode, "--work", str(work),
         "--max-tokens", str(max_tokens), *only],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.monotonic() - started
    return result


def run_pipeline_here(work: Path, mode: str, max_tokens: int, transformers_only: bool) -> None:
    from rig_ray import GenerateParams
    from rig_ray.batch import Stage, run_pipeline

    answerers, judge, schema_on = engines(transformers_only)
    stages = [
        Stage("answer", generators=answerers, template=ANSWER, num_generations=2,
              params=GenerateParams(max_tokens=max_tokens)),
        Stage("judge", generator=judge, template=JUDGE, json_schema=SCORE if schema_on else None,
              params=GenerateParams(max_tokens=16)),
    ]  # fmt: skip
    summary = run_pipeline(
        str(work / "q.jsonl"), str(work / f"pipe-{mode}"), stages=stages, gpu_sharing=mode,
        progress=False,
    )  # fmt: skip
    answer, judge = summary.stage("answer").engines, summary.stage("judge").engines
    between = (judge.load_s + answer.unload_s) if mode == "swap" else 0.0
    print(
        json.dumps(
            {
                "inner_wall_s": summary.wall_s,
                "unload_s": answer.unload_s,
                "load_s": judge.load_s,
                "between_stages_s": between,
                "judged": summary.stage("judge").generations_written,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--transformers-only", action="store_true", help="no vLLM engine")
    parser.add_argument("--run-pipeline", choices=("swap", "stream"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_pipeline:
        run_pipeline_here(
            Path(args.work), args.run_pipeline, args.max_tokens, args.transformers_only
        )
        return
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        questions(work / "q.jsonl", args.questions)
        only = args.transformers_only
        results = {
            "separate": separate(work, args.max_tokens, only),
            "swap": pipeline(work, "swap", args.max_tokens, only),
            "stream": pipeline(work, "stream", args.max_tokens, only),
        }
    base = results["separate"]["wall_s"]
    kind = "transformers only" if args.transformers_only else "transformers + vLLM, vLLM judge"
    print(
        f"{args.questions} questions x 2 answers, then a judge ({kind}); "
        f"max_tokens={args.max_tokens}"
    )
    for name, result in results.items():
        line = f"{name:9} {result['wall_s']:7.1f}s  ({result['wall_s'] / base:.2f}x separate)"
        if name == "swap":
            line += (
                f"; between stages: unload {result['unload_s']:.1f}s + load "
                f"{result['load_s']:.1f}s = {result['between_stages_s']:.1f}s"
            )
        print(line)


if __name__ == "__main__":
    main()
