"""Memory and time of what a resumed job's driver learns from its output folder.

    .venv/bin/python benchmarks/scan_memory.py --rows 1000000

Writes an output folder of `--rows` done generations (ids like `row-123456`, one generation
each, in parts of 100,000 rows, with 1% failed), then, in a fresh process, scans it
(`OutputFolder.scan`, then `finished(retry_failed=False)`, the map the driver's first pass
reads) and looks every id up, 10,000 at a time, as the first pass does a block at a time. It
prints the scan's time, the lookups' time, and the process's RSS above its start: at the peak,
and what is held after (the scan and the map, once the allocators have given back what they
kept: Arrow's pool and the C heap). Run it on two trees to compare.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time


def write(folder: str, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for start in range(0, rows, 100_000):
        n = range(start, min(start + 100_000, rows))
        table = pa.table(
            {
                "id": [f"row-{i}" for i in n],
                "generation_index": pa.array([0] * len(n), pa.int32()),
                "text": [f"reply {i}" for i in n],
                "error": [None if i % 100 else "boom" for i in n],
            }
        )
        pq.write_table(table, os.path.join(folder, f"part-{start:09d}.parquet"))


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(folder: str, rows: int) -> None:
    import pyarrow as pa

    from rig_ray.batch.output import OutputFolder

    gc.collect()
    start = rss_mib()
    started = time.perf_counter()
    scan = OutputFolder(folder).scan()
    finished = scan.finished(retry_failed=False)
    scanned = time.perf_counter()
    lookup = getattr(finished, "masks", None)
    blocks = [  # the id column of each block, as the first pass has it
        pa.array([f"row-{i}" for i in range(first, min(first + 10_000, rows))])
        for first in range(0, rows, 10_000)
    ]
    looking = time.perf_counter()
    found = 0
    for block in blocks:
        masks = lookup(block) if lookup else [finished.get(i, 0) for i in block.to_pylist()]
        found += sum(1 for mask in masks if mask)
    looked = time.perf_counter()
    del blocks
    assert found == rows, found
    del masks
    gc.collect()
    pa.default_memory_pool().release_unused()  # what the allocators keep but nothing uses
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    held = rss_mib() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start
    print(
        json.dumps(
            {"scan": scanned - started, "lookup": looked - looking, "peak": peak, "held": held}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows)
        return
    with tempfile.TemporaryDirectory() as folder:
        write(folder, args.rows)
        done = subprocess.run(
            [sys.executable, __file__, "--child", folder, "--rows", str(args.rows)],
            check=True,
            capture_output=True,
            text=True,
        )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print("| rows | scan s | lookups s | peak MiB above the start | held after, MiB |")
    print("|---:|---:|---:|---:|---:|")
    print(
        f"| {args.rows:,} | {result['scan']:.1f} | {result['lookup']:.1f} "
        f"| {result['peak']:,.0f} | {result['held']:,.0f} |"
    )


if __name__ == "__main__":
    main()
