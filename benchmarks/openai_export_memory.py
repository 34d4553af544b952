"""Peak memory and time of `batch.export_openai` over a finished job of many lines.

    .venv/bin/python benchmarks/openai_export_memory.py --lines 200000

Makes (once, in `--folder`) an OpenAI batch job's folder as `rig-ray batch` leaves it: the
batch file read by `openai_files.prepare`, and output parts of one generation per line in a
shuffled order (`--per-part` rows each, answers of about 300 characters). Then, in a fresh
process, exports it to `output.jsonl` and prints the wall time and the process's peak RSS
(`ru_maxrss`), above the RSS it had before the export began.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ANSWER = "a generated answer of a few dozen words, " * 7


def make(folder: Path, lines: int, per_part: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rig_ray.batch import openai_files

    folder.mkdir(parents=True, exist_ok=True)
    source = folder.parent / f"{folder.name}.jsonl"
    with source.open("w") as out:
        for index in range(lines):
            body = {
                "model": "m",
                "messages": [{"role": "user", "content": f"Question {index}: " + "why? " * 40}],
                "max_tokens": 64,
            }
            line = {"custom_id": f"r{index}", "method": "POST", "url": "/v1/chat/completions"}
            out.write(json.dumps({**line, "body": body}) + "\n")
    openai_files.prepare(str(source), str(folder), vllm_fields=False)
    ids = [f"r{index}" for index in range(lines)]
    random.Random(0).shuffle(ids)  # parts hold lines in the order they finished
    for start in range(0, lines, per_part):
        chunk = ids[start : start + per_part]
        count = len(chunk)
        table = pa.table(
            {
                "id": chunk,
                "generation_index": [0] * count,
                "text": [ANSWER] * count,
                "stop_reason": ["length"] * count,
                "input_tokens": [60] * count,
                "output_tokens": [64] * count,
                "error": pa.nulls(count, pa.string()),
            }
        )
        pq.write_table(table, folder / f"part-0-{start // per_part:06d}.parquet")


def export(folder: Path) -> None:
    from rig_ray.batch import export_openai

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    summary = export_openai(str(folder), str(folder / "output.jsonl"), str(folder / "e.jsonl"))
    seconds = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"{summary.output_lines} lines exported in {seconds:.1f} s; peak RSS {peak / 1024:.0f} "
        f"MiB ({(peak - before) / 1024:.0f} MiB above the {before / 1024:.0f} MiB before)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--per-part", type=int, default=5_000)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--export-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.gettempdir()) / f"rig-ray-export-{args.lines}"
    if args.export_only:
        export(folder)
        return
    if not (folder / "_openai").exists():
        make(folder, args.lines, args.per_part)
    command = [sys.executable, __file__, "--export-only", "--folder", str(folder)]
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
