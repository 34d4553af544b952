"""Peak memory of a batch job's driver as its input grows: `rig_ray.batch.run` must stream.

    .venv/bin/python benchmarks/batch_memory.py --rows 1000,100000

Each size is a JSONL file of that many prompts, run end to end into Parquet by `batch.run` with
a generator that costs nothing (canned replies with token counts, defined here; it travels to
the Ray actors by value), so the rows flow as fast as the pipeline can move them. Each size
runs in a fresh process of its own, which reports its own peak RSS (`ru_maxrss`: the driver,
not Ray's daemons or actors) after starting Ray and at the end. Target: the largest size's peak
within 1.5x of the smallest's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

import rig_ray as rr

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TOPICS = ("the sea", "a city at night", "winter", "a library", "trains", "the moon", "bread")
TARGET = 1.5


class CannedGenerator(rr.Generator):
    """Replies `reply` to every conversation at once, with word counts as token usage."""

    reply: str = "A short canned reply of a few words."

    async def generate_messages(
        self, messages: t.Sequence[t.Sequence[rr.Message]], params: t.Sequence[rr.GenerateParams]
    ) -> list[rr.GeneratedMessage]:
        output_tokens = len(self.reply.split())
        return [
            rr.GeneratedMessage(
                message=rr.Message(role="assistant", content=self.reply),
                stop_reason="stop",
                usage=rr.Usage(
                    input_tokens=sum(len(m.content.split()) for m in conversation),
                    output_tokens=output_tokens,
                ),
            )
            for conversation in messages
        ]


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_prompts(path: Path, rows: int) -> None:
    with open(path, "w") as out:
        for i in range(rows):
            prompt = f"Write a short paragraph about {TOPICS[i % len(TOPICS)]} (#{i})."
            out.write(json.dumps({"id": i, "prompt": prompt}) + "\n")


def child(args: argparse.Namespace) -> None:
    """One size, in this fresh process: start Ray, run the job, report the driver's peaks."""
    import ray
    from ray.data import DataContext

    from rig_ray.batch import run

    # address="local": a cluster of our own, never one another program started here.
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    DataContext.get_current().enable_progress_bars = False
    try:
        after_init = peak_mib()
        started = time.perf_counter()
        summary = run(
            args.source,
            args.output,
            generator=CannedGenerator(model="canned"),
            template="$prompt",
            replicas=args.replicas,
            num_cpus=args.num_cpus,
            batch_size=args.batch_size,
            progress=False,
        )
        wall = time.perf_counter() - started
    finally:
        ray.shutdown()
    result = {
        "rows": summary.generations_written,
        "failed": summary.failed,
        "parts": len(summary.parts),
        "wall_s": wall,
        "after_init_mib": after_init,
        "peak_mib": peak_mib(),
    }
    Path(args.result).write_text(json.dumps(result))


def run_size(args: argparse.Namespace, rows: int, folder: Path) -> dict[str, t.Any]:
    source, result = folder / f"prompts-{rows}.jsonl", folder / f"result-{rows}.json"
    write_prompts(source, rows)
    command = [sys.executable, __file__, "--child", "--source", str(source)]
    command += ["--output", str(folder / f"out-{rows}"), "--result", str(result)]
    for name in ("batch_size", "num_cpus", "replicas"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not result.exists():
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
        raise SystemExit(f"the {rows:,}-row run failed (exit code {done.returncode})")
    return {"input": rows, **json.loads(result.read_text())}


def print_table(results: list[dict[str, t.Any]]) -> None:
    print(
        f"\n{'rows':>8} {'written':>8} {'parts':>5} {'wall s':>7} {'rows/s':>8} "
        f"{'after ray.init MiB':>18} {'peak MiB':>9}"
    )
    for r in results:
        print(
            f"{r['input']:8,} {r['rows']:8,} {r['parts']:5d} {r['wall_s']:7.1f} "
            f"{r['rows'] / r['wall_s']:8.0f} {r['after_init_mib']:18.0f} {r['peak_mib']:9.0f}"
        )
    small, large = results[0], results[-1]
    ratio = large["peak_mib"] / small["peak_mib"]
    growth = (large["peak_mib"] - large["after_init_mib"]) - (
        small["peak_mib"] - small["after_init_mib"]
    )
    verdict = "ok" if ratio <= TARGET else "MISSED"
    print(
        f"\ndriver peak, {large['input']:,} rows / {small['input']:,} rows: {ratio:.2f}x "
        f"(target <= {TARGET}: {verdict}); {growth:+.0f} MiB more above the post-ray.init level"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000,100000", help="input sizes, comma-separated")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--num-cpus", type=float, default=0.5, help="CPUs of each actor")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    sizes = sorted(int(size) for size in args.rows.split(","))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(
        f"rig_ray.batch.run with a canned generator: batch size {args.batch_size}, "
        f"{args.replicas} replica(s) x {args.num_cpus:g} CPU, ray.init(num_cpus=2)"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, {memory:.0f} GiB, {platform.machine()}, "
        f"Python {platform.python_version()}"
    )
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for rows in sizes:
            results.append(run_size(args, rows, Path(folder)))
            print(f"{rows:,} rows done in {results[-1]['wall_s']:.1f}s", flush=True)
    print_table(results)


if __name__ == "__main__":
    main()
