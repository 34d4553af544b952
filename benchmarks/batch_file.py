"""An OpenAI batch file through `vllm run-batch` and through `rig-ray batch`: wall time, peak
memory (RSS and PSS of the process tree), and a run killed halfway then run again.

    flock /tmp/vllm.lock .venv/bin/python benchmarks/batch_file.py --lines 2000 --max-tokens 32
    flock /tmp/vllm.lock .venv/bin/python benchmarks/batch_file.py --model tiny \
        --lines 2000,10000,50000 --max-tokens 64 --ignore-eos --memory-share 0.05 --skip-kill

Both sides read the same JSONL file of chat requests (greedy, at most `--max-tokens` new
tokens each, with `--ignore-eos` exactly that many) on vLLM in `--dtype` (float32 by default),
each in a process of its own, once per size in `--lines`:
- vLLM: `python -m vllm.entrypoints.openai.run_batch -i IN -o OUT --model FOLDER`;
- rig_ray: `rig-ray batch IN OUT/ --generator vllm!FOLDER,... --output-format openai`, its own
  local Ray (`--num-cpus` 1 for the engine actor).
Both get the same engine settings (dtype, eager, max_model_len 1024, `--memory-share` as
gpu_memory_utilization, which on vLLM's CPU backend is the share of the memory kept for the
KV cache). The engines' scheduler sizes are each side's own unless `--max-num-seqs` /
`--max-num-batched-tokens` set them on both: `vllm run-batch` starts its engine in a usage
context that vLLM's sizing tables leave out, so it falls back to 128 sequences and 2048
batched tokens, while rig_ray sizes its engine as `vllm.LLM` does (on a CPU: 256 and 4096).
`--model` is a model folder, the embedded SmolLM2 when left out, or `tiny`: a
2-layer random-weight Llama with SmolLM2's tokenizer (`tests.conftest.build_tiny_llama`),
written once to `--tiny-folder`, so the engine is fast and the per-line costs show.
Peak memory is the largest sum, over the process and all its descendants (Ray's workers
included), of the resident memory (RSS: a page shared by several processes counts once per
process) and of the proportional set size (PSS from /proc/PID/smaps_rollup: a shared page is
split between the processes that map it), each sampled every 0.2 s; a run whose tree passes
`--max-gib` of RSS is killed. Then (unless `--skip-kill`) each is started again on a fresh
output, killed (SIGKILL to the whole process group) once half its full-run time has passed
(vLLM) or half the lines are in the Parquet parts (rig_ray), and run once more with the same
command: the second run's wall time shows what was kept. `vllm run-batch` writes nothing until
the end, so its rerun starts from nothing; rig_ray's resumes.
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

from rig_ray.generator.identifier import encode_value

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TOPICS = ["the sea", "a cat", "rain", "bread", "a train", "snow", "music", "a tree", "fire", "salt"]


def write_lines(
    path: Path, lines: int, max_tokens: int, name: str, *, ignore_eos: bool = False
) -> None:
    with path.open("w") as out:
        for number in range(lines):
            body: dict[str, t.Any] = {
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
            if ignore_eos:
                body["ignore_eos"] = True  # vLLM's extra field: both sides take it
            line = {"custom_id": f"r{number}", "method": "POST", "url": "/v1/chat/completions"}
            out.write(json.dumps({**line, "body": body}) + "\n")


def _rollup(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes from /proc/PID/smaps_rollup; (0, 0) once the process is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0, 0
    return rss, pss


def tree_memory(pid: int) -> tuple[int, int]:
    """Summed (RSS, PSS) in bytes of the process and all its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    rss = pss = 0
    for member in members:
        one_rss, one_pss = _rollup(member.pid)
        rss += one_rss
        pss += one_pss
    return rss, pss


class Run(t.NamedTuple):
    wall_s: float
    peak_rss_gib: float
    peak_pss_gib: float
    code: int


def timed(
    command: list[str],
    *,
    kill_when: t.Callable[[float], bool] | None = None,
    log: Path,
    max_gib: float = 18.0,
) -> Run:
    """Run `command` in its own process group; SIGKILL the group once `kill_when(elapsed)`
    says so, or once the tree's RSS passes `max_gib`."""
    started = time.monotonic()
    peak_rss = peak_pss = 0
    with log.open("ab") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=sink, start_new_session=True)
        while process.poll() is None:
            rss, pss = tree_memory(process.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            too_big = rss > max_gib * 2**30
            if too_big or (kill_when is not None and kill_when(time.monotonic() - started)):
                if too_big:
                    print(f"killed: the process tree passed {max_gib} GiB RSS", flush=True)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                break
            time.sleep(0.2)
    return Run(time.monotonic() - started, peak_rss / 2**30, peak_pss / 2**30, process.returncode)


def parquet_rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.glob("part-*.parquet"))


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as lines:
        return sum(1 for _ in lines)


def model_folder(choice: str | None, tiny_folder: Path) -> Path:
    """The embedded SmolLM2 (None), the tiny random Llama written once ('tiny'), or a folder."""
    from rig_ray.embedded import embedded_model_path

    if choice is None:
        return embedded_model_path()
    if choice != "tiny":
        return Path(choice)
    if not (tiny_folder / "config.json").exists():
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo's tests
        from tests.conftest import build_tiny_llama

        tiny_folder.mkdir(parents=True, exist_ok=True)
        build_tiny_llama(tiny_folder, embedded_model_path())
    return tiny_folder


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", default="2000", help="sizes, comma-separated: 2000,10000")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--ignore-eos", action="store_true", help="every line gets max_tokens")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--memory-share", type=float, default=0.3, help="gpu_memory_utilization")
    parser.add_argument("--model", default=None, help="a model folder, or 'tiny'")
    parser.add_argument("--tiny-folder", type=Path, default=Path("/tmp/rig-ray-tiny-llama"))
    parser.add_argument("--max-gib", type=float, default=18.0, help="kill a tree past this RSS")
    parser.add_argument("--skip-kill", action="store_true", help="full runs only")
    parser.add_argument("--max-num-seqs", type=int, help="both engines (default: their own)")
    parser.add_argument("--max-num-batched-tokens", type=int, help="both engines")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    model = str(model_folder(args.model, args.tiny_folder))
    sizes = [int(size) for size in args.lines.split(",")]
    name = "served"
    work = Path(tempfile.mkdtemp(prefix="batch-file-"))
    log = work / "log.txt"
    engine = ["--dtype", args.dtype, "--enforce-eager", "--max-model-len", "1024"]
    generator = (
        f"vllm!{model},dtype={args.dtype},enforce_eager=True,max_model_len=1024,"
        f"gpu_memory_utilization={args.memory_share}"
    )
    sizing = {
        key: value
        for key, value in (
            ("max_num_seqs", args.max_num_seqs),
            ("max_num_batched_tokens", args.max_num_batched_tokens),
        )
        if value is not None
    }
    if sizing:
        engine += [f"--{key.replace('_', '-')}={value}" for key, value in sizing.items()]
        generator += f",engine_args={encode_value(sizing)}"
    print(machine())
    print(f"model {model}; max_tokens {args.max_tokens}, ignore_eos {args.ignore_eos}, ")
    print(f"{args.dtype}, gpu_memory_utilization {args.memory_share}; logs in {log}")
    print(f"engine sizes: {sizing or 'each side its own'}")
    print("| lines | run | wall s | peak RSS GiB | peak PSS GiB | exit | output lines |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for lines in sizes:
        source = work / f"in-{lines}.jsonl"
        write_lines(source, lines, args.max_tokens, name, ignore_eos=args.ignore_eos)
        vllm = [
            sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(source),
            "--model", model, "--served-model-name", name, *engine,
            "--gpu-memory-utilization", str(args.memory_share),
        ]  # fmt: skip

        def rig_ray(out: Path, source: Path = source) -> list[str]:
            return [
                sys.executable, "-m", "rig_ray.cli", "batch", str(source), str(out),
                "--generator", generator, "--output-format", "openai", "--num-cpus", "1",
                "--seconds-per-part", "5", "--quiet",
            ]  # fmt: skip

        def row(label: str, run: Run, output: Path, lines: int = lines) -> Run:
            print(
                f"| {lines} | {label} | {run.wall_s:.1f} | {run.peak_rss_gib:.2f} | "
                f"{run.peak_pss_gib:.2f} | {run.code} | {count_lines(output)} |",
                flush=True,
            )
            return run

        def go(command: list[str], **kwargs: t.Any) -> Run:
            return timed(command, log=log, max_gib=args.max_gib, **kwargs)

        first = work / f"vllm-{lines}.jsonl"
        full_vllm = row("vllm run-batch", go([*vllm, "-o", str(first)]), first)
        out = work / f"out-{lines}"
        row("rig-ray batch", go(rig_ray(out)), out / "output.jsonl")
        if not args.skip_kill:
            kill_and_rerun(vllm, rig_ray, go, row, work / f"again-{lines}", full_vllm, lines)


def kill_and_rerun(
    vllm: list[str],
    rig_ray: t.Callable[[Path], list[str]],
    go: t.Callable[..., Run],
    row: t.Callable[[str, Run, Path], Run],
    work: Path,
    full_vllm: Run,
    lines: int,
) -> None:
    work.mkdir()
    half = full_vllm.wall_s / 2
    again = [*vllm, "-o", str(work / "v2.jsonl")]
    row("vllm run-batch, killed halfway", go(again, kill_when=lambda s: s > half), work / "-")
    row("vllm run-batch, rerun", go(again), work / "v2.jsonl")
    out = work / "out2"
    killed = go(rig_ray(out), kill_when=lambda s: parquet_rows(out) >= lines // 2)
    row(f"rig-ray batch, killed at {parquet_rows(out)} lines in parts", killed, work / "-")
    row("rig-ray batch, rerun", go(rig_ray(out)), out / "output.jsonl")


if __name__ == "__main__":
    main()
