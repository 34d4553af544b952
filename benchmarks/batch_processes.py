"""Where a `rig-ray batch` job's memory is, process by process, at its peak.

    flock /tmp/vllm.lock .venv/bin/python benchmarks/batch_processes.py --lines 200

Runs `rig-ray batch` on an OpenAI batch file of `--lines` chat lines (the embedded SmolLM2
on vLLM, float32, eager, greedy, 4 new tokens a line; `gpu_memory_utilization` as in
`batch_file.py`) in a process of its own with its own local Ray. Every 0.2 s it sums the
resident memory of that process and all its descendants (Ray's daemons and workers, vLLM's
EngineCore and worker); at the largest sum it prints each process's share, largest first,
with its PSS (a shared page split between the processes that map it) beside. `--env KEY=VALUE`
(repeatable) sets an environment variable for the job, e.g. a `RAY_...` system setting.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from batch_file import _rollup, write_lines
from common import machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def snapshot(pid: int) -> list[tuple[int, int, str]]:
    """(RSS bytes, PSS bytes, command line) of the process and every descendant."""
    import psutil

    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    rows = []
    for member in members:
        try:
            rss, pss = _rollup(member.pid)
            rows.append((rss, pss, " ".join(member.cmdline())[:90]))
        except psutil.Error:
            continue
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--memory-share", type=float, default=0.3, help="gpu_memory_utilization")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the job")
    args = parser.parse_args()
    env = {**os.environ, **dict(item.split("=", 1) for item in args.env)}

    from rig_ray.embedded import embedded_model_path

    model = str(embedded_model_path())
    work = Path(tempfile.mkdtemp(prefix="batch-processes-"))
    source = work / "in.jsonl"
    write_lines(source, args.lines, 4, "smollm2")
    generator = (
        f"vllm!{model},dtype=float32,enforce_eager=True,max_model_len=1024,"
        f"gpu_memory_utilization={args.memory_share}"
    )
    command = [
        sys.executable, "-m", "rig_ray.cli", "batch", str(source), str(work / "out"),
        "--generator", generator, "--output-format", "openai", "--num-cpus", "1", "--quiet",
    ]  # fmt: skip
    print(machine())
    started = time.monotonic()
    with (work / "log.txt").open("wb") as log:
        job = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True, env=env)
        peak: list[tuple[int, int, str]] = []
        while job.poll() is None:
            rows = snapshot(job.pid)
            if sum(r[0] for r in rows) > sum(r[0] for r in peak):
                peak = rows
            time.sleep(0.2)
    print(f"exit {job.returncode} after {time.monotonic() - started:.1f}s; {args.lines} lines")
    print(f"with {' '.join(args.env) or 'no extra environment'}")
    print(
        f"peak, all processes: {sum(r[0] for r in peak) / 2**30:.2f} GiB RSS, "
        f"{sum(r[1] for r in peak) / 2**30:.2f} GiB PSS"
    )
    for rss, pss, line in sorted(peak, reverse=True):
        print(f"{rss / 2**20:8.0f} MiB RSS {pss / 2**20:8.0f} MiB PSS  {line.strip()}")


if __name__ == "__main__":
    main()
