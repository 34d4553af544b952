"""Peak memory of reading one JSON Lines file into Arrow, as a batch job's read task does.

    .venv/bin/python benchmarks/jsonl_read_memory.py --rows 100000,300000

Each size is a file of chat-like rows (an id, a prompt of about 150 characters, a sampling
param and a one-message `messages` list), read by `rig_ray.batch.source`'s JSON reader (the
function Ray Data runs in the read task, called here without Ray) in a fresh process of its
own, which reports its peak RSS above what it held before the read (`ru_maxrss`) against the
file's size. Run it on two trees to compare them.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def child(rows: int) -> None:
    import pyarrow as pa

    from rig_ray.batch.source import _JsonRows

    data = "".join(
        json.dumps(
            {
                "id": n,
                "prompt": f"Write a short paragraph about topic number {n}. " * 3,
                "temperature": 0.5,
                "messages": [{"role": "user", "content": f"hello {n}"}],
            }
        )
        + "\n"
        for n in range(rows)
    ).encode()
    size = len(data)
    batch = pa.table({"bytes": [data]})
    del data
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    out = _JsonRows("id")(batch)
    tables = [out] if isinstance(out, pa.Table) else list(out)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    read = sum(table.num_rows for table in tables)
    assert read == rows, (read, rows)
    mib = size / 2**20
    print(
        f"{rows:>10,} {mib:>9.1f} {len(tables):>7} {seconds:>7.1f} {peak:>10.0f}"
        f" {peak / mib:>7.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,300000")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    header = ("rows", "file MiB", "blocks", "wall s", "peak MiB", "/ file")
    print(
        " ".join(
            f"{name:>{width}}" for name, width in zip(header, (10, 9, 7, 7, 10, 8), strict=True)
        )
    )
    for rows in (int(n) for n in args.rows.split(",")):
        subprocess.run([sys.executable, __file__, "--child", str(rows)], check=True)


if __name__ == "__main__":
    main()
