"""An OpenAI batch file through `vllm run-batch` and through `rig-ray batch`: wall time, peak
memory, and a run killed halfway then run again.

    flock /tmp/vllm.lock .venv/bin/python benchmarks/batch_file.py --lines 2000 --max-tokens 32

Both sides read the same JSONL file of `--lines` chat requests (the embedded SmolLM2, greedy,
at most `--max-tokens` new tokens each) on vLLM in `--dtype` (float32 by default), each in a
process of its own:
- vLLM: `python -m vllm.entrypoints.openai.run_batch -i IN -o OUT --model FOLDER`;
- rig_ray: `rig-ray batch IN OUT/ --generator vllm!FOLDER,... --output-format openai`, its own
  local Ray (`--num-cpus` 1 for the engine actor).
Peak memory is the largest sum of the resident memory of the process and all its descendants
(Ray's workers included), sampled every 0.2 s. Then each is started again on a fresh output,
killed (SIGKILL to the whole process group) once half its full-run time has passed (vLLM) or
half the lines are in the Parquet parts (rig_ray), and run once more with the same command:
the second run's wall time shows what was kept. `vllm run-batch` writes nothing until the end,
so its rerun starts from nothing; rig_ray's resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

from common import machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TOPICS = ["the sea", "a cat", "rain", "bread", "a train", "snow", "music", "a tree", "fire", "salt"]


def write_lines(path: Path, lines: int, max_tokens: int, name: str) -> None:
    with path.open("w") as out:
        for number in range(lines):
            body = {
                "model": name,
                "messages": [
                    {
                        "role": "user",
                        "content": f"Write a sentence about {TOPICS[number % 10]}, #{number}.",
                    }
                ],
                "temperature": 0,
                "max_tokens": max_tokens,
            }
            line = {"custom_id": f"r{number}", "method": "POST", "url": "/v1/chat/completions"}
            out.write(json.dumps({**line, "body": body}) + "\n")


def tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


class Run(t.NamedTuple):
    wall_s: float
    peak_gib: float
    code: int


def timed(
    command: list[str], *, kill_when: t.Callable[[float], bool] | None = None, log: Path
) -> Run:
    """Run `command` in its own process group; with `kill_when(elapsed)`, SIGKILL the group
    once it says so."""
    started = time.monotonic()
    peak = 0
    with log.open("ab") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=sink, start_new_session=True)
        while process.poll() is None:
            peak = max(peak, tree_rss(process.pid))
            if kill_when is not None and kill_when(time.monotonic() - started):
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                break
            time.sleep(0.2)
    return Run(time.monotonic() - started, peak / 2**30, process.returncode)


def parquet_rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.glob("part-*.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--memory-share", type=float, default=0.3, help="gpu_memory_utilization")
    parser.add_argument("--skip-kill", action="store_true", help="full runs only")
    args = parser.parse_args()

    from rig_ray.embedded import embedded_model_path

    model = str(embedded_model_path())
    name = "smollm2"
    work = Path(tempfile.mkdtemp(prefix="batch-file-"))
    source = work / "in.jsonl"
    write_lines(source, args.lines, args.max_tokens, name)
    log = work / "log.txt"
    engine = ["--dtype", args.dtype, "--enforce-eager", "--max-model-len", "1024"]
    vllm = [
        sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(source),
        "--model", model, "--served-model-name", name, *engine,
        "--gpu-memory-utilization", str(args.memory_share),
    ]  # fmt: skip
    generator = (
        f"vllm!{model},dtype={args.dtype},enforce_eager=True,max_model_len=1024,"
        f"gpu_memory_utilization={args.memory_share}"
    )

    def rig_ray(out: Path) -> list[str]:
        return [
            sys.executable, "-m", "rig_ray.cli", "batch", str(source), str(out),
            "--generator", generator, "--output-format", "openai", "--num-cpus", "1",
            "--seconds-per-part", "5", "--quiet",
        ]  # fmt: skip

    print(machine())
    print(f"{args.lines} lines, max_tokens {args.max_tokens}, {args.dtype}; logs in {log}")
    print("| run | wall s | peak memory GiB | exit |")
    print("|---|---:|---:|---:|")

    def row(label: str, run: Run) -> Run:  # printed as it ends: a run cut short keeps its rows
        print(f"| {label} | {run.wall_s:.1f} | {run.peak_gib:.2f} | {run.code} |", flush=True)
        return run

    full_vllm = row("vllm run-batch", timed([*vllm, "-o", str(work / "vllm.jsonl")], log=log))
    row("rig-ray batch", timed(rig_ray(work / "out"), log=log))
    if args.skip_kill:
        return
    half = full_vllm.wall_s / 2
    again = [*vllm, "-o", str(work / "v2.jsonl")]
    row("vllm run-batch, killed halfway", timed(again, kill_when=lambda s: s > half, log=log))
    row("vllm run-batch, rerun", timed(again, log=log))
    out = work / "out2"
    killed = timed(rig_ray(out), kill_when=lambda s: parquet_rows(out) >= args.lines // 2, log=log)
    row(f"rig-ray batch, killed at {parquet_rows(out)} lines in parts", killed)
    row("rig-ray batch, rerun", timed(rig_ray(out), log=log))
    lines = (out / "output.jsonl").read_text().splitlines()
    print(f"rig_ray after the rerun: {len(lines)} output lines ({args.lines} asked)")


if __name__ == "__main__":
    main()
