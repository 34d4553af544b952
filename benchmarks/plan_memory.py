"""Peak memory of a batch job's first pass over its input (`plan_rows`), in the driver.

    .venv/bin/python benchmarks/plan_memory.py --rows 1000000

Before any model loads, the driver reads the input once, in order: each row's id, the
duplicate check, and what is left to make. This script writes a Parquet file of `--rows` rows
(an id and a prompt of about 150 characters) in one row group (one block for Ray Data, as a
writer that puts a whole file in one group leaves it), starts a local Ray, and runs that pass
with nothing done yet, sampling the driver's RSS every 50 ms. It prints the pass's wall time,
its peak RSS above the RSS before it, and what it still holds after.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def write_input(path: str, rows: int) -> None:
    """The input file, written by a process of its own (so its memory is not the driver's)."""
    code = (
        "import sys, pyarrow as pa, pyarrow.parquet as pq\n"
        "n = int(sys.argv[2])\n"
        "ids = [str(i) for i in range(n)]\n"
        "prompts = [f'Write a short paragraph about topic number {i}. ' * 3 for i in range(n)]\n"
        "pq.write_table(pa.table({'id': ids, 'prompt': prompts}), sys.argv[1], row_group_size=n)\n"
    )
    subprocess.run([sys.executable, "-c", code, path, str(rows)], check=True)


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    import ray

    from rig_ray.batch.prepare import plan_rows
    from rig_ray.batch.prompts import PromptSpec
    from rig_ray.batch.source import read_prompts

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "in.parquet")
        write_input(path, args.rows)
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        dataset = read_prompts(path, data_cpus=0)
        spec = PromptSpec().resolve(["id", "prompt"])
        peak, done = [0.0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_mib())
                time.sleep(0.05)

        before = rss_mib()
        threading.Thread(target=sample, daemon=True).start()
        started = time.perf_counter()
        plan = plan_rows(dataset, spec, num_generations=1, finished={})
        seconds = time.perf_counter() - started
        done.set()
        print(f"{platform.machine()}, Python {platform.python_version()}")
        print(
            f"{plan.rows_in:,} rows in {seconds:.1f}s; peak {peak[0] - before:.0f} MiB above "
            f"the start, {rss_mib() - before:.0f} MiB held after"
        )


if __name__ == "__main__":
    main()
