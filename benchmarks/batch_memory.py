"""Peak memory of a batch job's driver as its input grows: `rig_ray.batch.run` must stream.

    .venv/bin/python benchmarks/batch_memory.py --rows 1000,100000
    .venv/bin/python benchmarks/batch_memory.py --resume 1000000

`--resume N` measures resuming instead: an output folder that already holds N done generations
and an input of those N rows plus `--pending` new ones, against a fresh folder with only the new
rows. It reports the driver's peak RSS and every actor's (each actor reads its own peak,
`VmHWM`, when it generates, and puts it in its rows' metadata). Target: an actor's peak when
resuming over N done generations is under 100 MB above its peak on the fresh folder.

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


ACTOR_TARGET_MIB = 100


class CannedGenerator(rr.Generator):
    """Replies `reply` to every conversation at once, with word counts as token usage; each
    result's `extra` holds the actor process's peak RSS so far (`actor_peak_mib`)."""

    reply: str = "A short canned reply of a few words."

    async def generate_messages(
        self, messages: t.Sequence[t.Sequence[rr.Message]], params: t.Sequence[rr.GenerateParams]
    ) -> list[rr.GeneratedMessage]:
        output_tokens = len(self.reply.split())
        extra = {"actor_peak_mib": vm_hwm_mib(), "actor_pid": os.getpid()}
        return [
            rr.GeneratedMessage(
                message=rr.Message(role="assistant", content=self.reply),
                stop_reason="stop",
                usage=rr.Usage(
                    input_tokens=sum(len(m.content.split()) for m in conversation),
                    output_tokens=output_tokens,
                ),
                extra=extra,
            )
            for conversation in messages
        ]


def vm_hwm_mib() -> float:
    """This process's peak resident memory (`VmHWM` in /proc/self/status), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_prompts(path: Path, rows: int, start: int = 0) -> None:
    with open(path, "a") as out:
        for i in range(start, start + rows):
            prompt = f"Write a short paragraph about {TOPICS[i % len(TOPICS)]} (#{i})."
            out.write(json.dumps({"id": i, "prompt": prompt}) + "\n")


def write_done(folder: Path, rows: int, per_part: int = 100_000) -> None:
    """An output folder holding generation 0 of ids 0..rows-1, as an earlier run leaves it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rig_ray.batch import OUTPUT_SCHEMA

    folder.mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, rows, per_part)):
        count = min(per_part, rows - start)
        columns: dict[str, t.Any] = {name: pa.nulls(count) for name in OUTPUT_SCHEMA.names}
        columns["id"] = pa.array([str(i) for i in range(start, start + count)])
        columns["generation_index"] = pa.array([0] * count, type=pa.int32())
        columns["text"] = pa.array(["A short canned reply of a few words."] * count)
        table = pa.table(
            [columns[name].cast(OUTPUT_SCHEMA.field(name).type) for name in OUTPUT_SCHEMA.names],
            schema=OUTPUT_SCHEMA,
        )
        pq.write_table(table, folder / f"part-00000000-done-{number:06d}.parquet")


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
        actors = _actor_peaks(args.output)
    finally:
        ray.shutdown()
    result = {
        "actor_peaks_mib": actors,
        "skipped": summary.skipped,
        "rows": summary.generations_written,
        "failed": summary.failed,
        "parts": len(summary.parts),
        "wall_s": wall,
        "after_init_mib": after_init,
        "peak_mib": peak_mib(),
    }
    Path(args.result).write_text(json.dumps(result))


def _actor_peaks(output: str) -> list[float]:
    """Each actor's highest reported peak RSS, from the metadata of the rows it made."""
    from rig_ray.batch import read_output

    peaks: dict[int, float] = {}
    for metadata in read_output(output, columns=["metadata"]).column("metadata").to_pylist():
        if metadata:
            extra = json.loads(metadata)
            pid = extra["actor_pid"]
            peaks[pid] = max(peaks.get(pid, 0.0), extra["actor_peak_mib"])
    return sorted(peaks.values())


def run_size(
    args: argparse.Namespace, rows: int, folder: Path, *, done: int = 0, label: str = ""
) -> dict[str, t.Any]:
    """One child run over `done + rows` input rows, the first `done` already in the output."""
    label = label or str(rows)
    source, result = folder / f"prompts-{label}.jsonl", folder / f"result-{label}.json"
    output = folder / f"out-{label}"
    write_prompts(source, done)
    write_prompts(source, rows, start=done)
    if done:
        write_done(output, done)
    command = [sys.executable, __file__, "--child", "--source", str(source)]
    command += ["--output", str(output), "--result", str(result)]
    for name in ("batch_size", "num_cpus", "replicas"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0 or not result.exists():
        print(finished.stdout[-4000:], finished.stderr[-4000:], sep="\n")
        raise SystemExit(f"the {label} run failed (exit code {finished.returncode})")
    return {"input": rows + done, **json.loads(result.read_text())}


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


def print_resume_table(fresh: dict[str, t.Any], resumed: dict[str, t.Any], done: int) -> None:
    print(
        f"\n{'run':>28} {'input rows':>10} {'skipped':>9} {'written':>8} {'wall s':>7} "
        f"{'driver peak MiB':>15} {'actor peak MiB':>15}"
    )
    for name, r in (("fresh folder", fresh), (f"resume over {done:,} done", resumed)):
        actor = max(r["actor_peaks_mib"], default=float("nan"))
        print(
            f"{name:>28} {r['input']:10,} {r['skipped']:9,} {r['rows']:8,} {r['wall_s']:7.1f} "
            f"{r['peak_mib']:15.0f} {actor:15.0f}"
        )
    extra = max(resumed["actor_peaks_mib"]) - max(fresh["actor_peaks_mib"])
    verdict = "ok" if extra < ACTOR_TARGET_MIB else "MISSED"
    driver = resumed["peak_mib"] - fresh["peak_mib"]
    print(
        f"\nactor peak, resuming over {done:,} done generations: {extra:+.0f} MiB against a "
        f"fresh folder (target < {ACTOR_TARGET_MIB}: {verdict}); driver {driver:+.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000,100000", help="input sizes, comma-separated")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--num-cpus", type=float, default=0.5, help="CPUs of each actor")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument(
        "--resume", type=int, metavar="N", help="measure resuming over N done generations"
    )
    parser.add_argument(
        "--pending", type=int, default=2000, help="new rows in the resume measurement"
    )
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
    if args.resume:
        with tempfile.TemporaryDirectory() as folder:
            fresh = run_size(args, args.pending, Path(folder), label="fresh")
            print(f"fresh folder done in {fresh['wall_s']:.1f}s", flush=True)
            resumed = run_size(args, args.pending, Path(folder), done=args.resume, label="resume")
            print(f"resume done in {resumed['wall_s']:.1f}s", flush=True)
        print_resume_table(fresh, resumed, args.resume)
        return
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for rows in sizes:
            results.append(run_size(args, rows, Path(folder)))
            print(f"{rows:,} rows done in {results[-1]['wall_s']:.1f}s", flush=True)
    print_table(results)


if __name__ == "__main__":
    main()
