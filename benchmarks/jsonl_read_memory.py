"""Peak memory of reading one JSON Lines file into Arrow, as a batch job's read tasks do.

    .venv/bin/python benchmarks/jsonl_read_memory.py --rows 100000,300000,1000000

Each size is a file of chat-like rows (an id, a prompt of about 150 characters, a sampling
param and a one-message `messages` list), written to a temporary folder and read by
`rig_ray.batch.json_input`'s reader (the function Ray Data runs in each read task, called
here without Ray) in a fresh process of its own, twice:

- whole: the file as one part, as a job reads a compressed file or one JSON array (and, before
  byte ranges, every file);
- ranges: the file's byte ranges of `RANGE_BYTES` one after another in one process, as the
  job's read tasks take them (side by side, on as many CPUs as they get);
- gzip: the file gzipped, read whole by one task as a job reads any compressed file.

Each process reports its peak RSS above what it held before the read (`ru_maxrss`), against
the file's size, and its wall time. For ranges the peak is that of the largest task.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write(path: Path, rows: int) -> None:
    with path.open("w") as out:
        for n in range(rows):
            row = {
                "id": n,
                "prompt": f"Write a short paragraph about topic number {n}. " * 3,
                "temperature": 0.5,
                "messages": [{"role": "user", "content": f"hello {n}"}],
            }
            out.write(json.dumps(row) + "\n")


def child(path: str, mode: str) -> None:
    import pyarrow.fs as pafs

    from rig_ray.batch.json_input import Part, json_parts, read_part

    filesystem = pafs.LocalFileSystem()
    size = Path(path).stat().st_size
    if mode == "gzip":
        packed = path + ".gz"
        with open(path, "rb") as plain, gzip.open(packed, "wb", compresslevel=1) as out:
            shutil.copyfileobj(plain, out)
        path, size = packed, Path(packed).stat().st_size
    parts = [Part(path, 0, None, size)] if mode != "ranges" else json_parts(filesystem, [path])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    read = 0
    for part in parts:
        for table in read_part(filesystem, part, "id"):
            read += table.num_rows
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    print(json.dumps({"rows": read, "parts": len(parts), "seconds": seconds, "peak": peak}))


def measure(path: Path, mode: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(path), "--mode", mode],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,300000")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.mode)
        return
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(
        "| rows | file MiB | parts | whole: peak MiB | / file | wall s "
        "| ranges: largest task's peak MiB | / file | wall s, one after another "
        "| gzip: peak MiB | / file | wall s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rows in (int(n) for n in args.rows.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "in.jsonl"
            write(path, rows)
            mib = path.stat().st_size / 2**20
            whole, ranges = measure(path, "whole"), measure(path, "ranges")
            packed = measure(path, "gzip")
        assert whole["rows"] == ranges["rows"] == packed["rows"] == rows, (whole, ranges, packed)
        print(
            f"| {rows:,} | {mib:.1f} | {ranges['parts']:.0f} | {whole['peak']:,.0f} "
            f"| {whole['peak'] / mib:.1f}x | {whole['seconds']:.1f} | {ranges['peak']:,.0f} "
            f"| {ranges['peak'] / mib:.1f}x | {ranges['seconds']:.1f} | {packed['peak']:,.0f} "
            f"| {packed['peak'] / mib:.1f}x | {packed['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
