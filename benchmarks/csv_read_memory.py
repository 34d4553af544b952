"""Peak memory of reading one CSV file into Arrow, as a batch job's read task does.

    .venv/bin/python benchmarks/csv_read_memory.py --rows 1000000,8000000

Each size is a file of rows `id,prompt,score` (a prompt of about 55 characters), written to a
temporary folder and read by `rig_ray.batch.csv_input.csv_tables` (the function each read
task runs, called here without Ray) in a fresh process of its own, three ways:

- whole: read whole, its types over all its rows (what a file of up to `WHOLE_BYTES` gets);
- streamed: read through once for its types (starting from those of its first
  `STREAM_BLOCK_BYTES`), then again in blocks of 1 MiB (a larger file);
- ray: pyarrow's streaming reader in blocks of 1 MiB, as Ray Data's own CSV reader reads.

Each process reports its peak RSS above what it held before the read (`ru_maxrss`), against
the file's size, and its wall time.
"""

from __future__ import annotations

import argparse
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write(path: Path, rows: int) -> None:
    with path.open("w") as out:
        out.write("id,prompt,score\n")
        for n in range(rows):
            out.write(f'r{n},"Tell me about topic number {n}, briefly and with care.",{n % 10}\n')


def child(path: str, mode: str) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.fs as pafs

    from rig_ray.batch.csv_input import csv_tables

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if mode == "ray":
        options = pacsv.ConvertOptions(column_types={"id": pa.string()})
        blocks = pacsv.open_csv(
            path, read_options=pacsv.ReadOptions(use_threads=False), convert_options=options
        )
    else:
        size = Path(path).stat().st_size
        whole = 1 << 40 if mode == "whole" else 0
        blocks = csv_tables(pafs.LocalFileSystem(), path, "id", size, whole_bytes=whole)
    rows = sum(block.num_rows for block in blocks)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    print(f"{rows} {peak:.0f} {time.perf_counter() - start:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,8000000")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print("| rows | file MiB | way | peak MiB above start | peak / file | wall s |")
    print("|---:|---:|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for rows in (int(n) for n in args.rows.split(",")):
            path = Path(folder) / f"{rows}.csv"
            write(path, rows)
            mib = path.stat().st_size / (1 << 20)
            for mode in ("whole", "streamed", "ray"):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(path), mode],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout.split()
                read, peak, wall = int(out[0]), float(out[1]), out[2]
                assert read == rows, (read, rows)
                print(
                    f"| {rows:,} | {mib:.0f} | {mode} | {peak:.0f} | {peak / mib:.1f}x | {wall} |"
                )
            path.unlink()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        child(sys.argv[2], sys.argv[3])
    else:
        main()
