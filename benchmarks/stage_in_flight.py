"""A pipeline stage on vLLM with as many rows in flight as its engine runs, against the
four batches it kept before (the default for engines that batch per call).

    flock /tmp/vllm.lock .venv/bin/python benchmarks/stage_in_flight.py [--rows 1500]

One stage (`run_pipeline`, swap mode) over `--rows` prompts on the tests' tiny random Llama
(float32, eager; it seldom stops before `--max-tokens`), once with `max_concurrent_batches=4`
(batches of 64: at most 256 rows in flight, each batch held until its slowest row ends) and
once unset (the driver asks the stage's engine actor for its `max_num_seqs` and keeps about
twice 1.1x that many rows in flight). Each run is a process of its own with its own local
Ray; the stage's tok/s is its output tokens over its wall time less its engines' load and
unload (both from its summary).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from batch_file import model_folder
from common import machine

RUN = """
import json, sys
from rig_ray import batch
[source, output, model, max_tokens, concurrent] = sys.argv[1:]
stage = batch.Stage(
    "answer",
    generator=f"vllm!{model},dtype=float32,enforce_eager=True,max_model_len=512,"
    f"gpu_memory_utilization=0.05,temperature=0,max_tokens={max_tokens}",
    template="$question",
    max_concurrent_batches=None if concurrent == "unset" else int(concurrent),
)
summary = batch.run_pipeline(source, output, stages=[stage], gpu_sharing="swap", progress=False)
[one] = summary.stages
engines = one.engines.load_s + one.engines.unload_s
print(json.dumps({"tokens": one.output_tokens, "stage_s": one.wall_s, "engines_s": engines}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--tiny-folder", type=Path, default=Path("/tmp/rig-ray-tiny-llama"))
    args = parser.parse_args()
    model = model_folder("tiny", args.tiny_folder)
    work = Path(tempfile.mkdtemp(prefix="stage-in-flight-"))
    source = work / "questions.jsonl"
    with source.open("w") as out:
        for number in range(args.rows):
            out.write(json.dumps({"id": f"q{number}", "question": f"Tell me about #{number}."}))
            out.write("\n")
    print(machine())
    print(f"{args.rows} rows, max_tokens {args.max_tokens}, tiny Llama (float32); in {work}")
    print("| max_concurrent_batches | process wall s | stage s | load + unload s | tok/s |")
    print("|---|---:|---:|---:|---:|")
    for concurrent in ("4", "unset"):
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", RUN, str(source), str(work / f"out-{concurrent}"),
             str(model), str(args.max_tokens), concurrent],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        wall = time.monotonic() - started
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        stage, engines = figures["stage_s"], figures["engines_s"]
        rate = figures["tokens"] / (stage - engines)
        print(f"| {concurrent} | {wall:.1f} | {stage:.1f} | {engines:.1f} | {rate:.0f} |")


if __name__ == "__main__":
    main()
