"""Streamed chat load on vLLM's own OpenAI server against `rig-ray serve` on the same engine.

    .venv/bin/python benchmarks/serve_vs_vllm.py --requests 48 --concurrency 16

Both servers load the same model folder (the embedded SmolLM2) with the same engine settings
(`--dtype`, default bfloat16; eager; max_model_len 1024; VLLM_CPU_KVCACHE_SPACE=2) and face
the same load, one server at a time, each in its own processes: `--requests` streamed chat
requests, `--concurrency` in flight, each asking for `max_tokens` drawn (seeded) from
16/32/64/128 with `ignore_eos`, so both do the same work. The client is the official `openai`
package with `stream_options.include_usage`. Printed: output tok/s (usage tokens / wall
time), time to first content token (TTFT) p50/p99, end-to-end p50/p99, and the ratios
rig_ray / vLLM. Targets: tok/s >= 0.9x, TTFT p50 <= 1.5x.

`--sides` picks the servers, in order: `vllm`, `rig_ray` (`rig-ray serve` as it runs by
default: one generator on a Ray of its own, so the model's replica holds the routes and
answers HTTP itself, through Ray Serve 2.60's direct ingress, with no Serve proxy in between),
`rig_ray_proxy` (`--no-direct-ingress`: every request and chunk through Serve's HTTP proxy),
`rig_ray_split` (`--split-deployments`: the routes in an ingress deployment in front of the
model's, through the proxy), `rig_ray_one` (`--one-deployment`, the default asked for by
name), `rig_ray_direct` (`--direct-ingress`, the default asked for by name) and `rig_ray_lean`
(through the proxy, on a Ray started with the settings of Serve's
`RAY_SERVE_THROUGHPUT_OPTIMIZED` that keep its proxy: user code and the proxy's router on
their process's main loop, access logs buffered). rig-ray's Ray workers run at
`--ray-niceness` (0, what `rig-ray serve` gives them on its own Ray anyway, as `vllm serve`
runs; Ray's own default is 15, which on a busy machine hands the CPU to everything else).

With `--client vllm` the load is vLLM's own benchmark client instead (`vllm.benchmarks.serve`,
what `vllm bench serve` runs; imported here, as the `vllm` command fails on vllm-cpu's package
name): the random dataset, `--input-len`/`--output-len` tokens (128/128), `--prompts` (64),
`--concurrency` at a time, `--ignore-eos`, on `--backend` (`openai`: /v1/completions,
`openai-chat`: /v1/chat/completions). Printed: output tok/s, median and p99 TTFT, TPOT (time
per output token after the first) and ITL, and the ratios. Targets: tok/s >= 1.0x, median
TTFT <= 1.2x, median TPOT <= 1.1x.

    .venv/bin/python benchmarks/serve_vs_vllm.py --client vllm

`--rounds N` runs every side N times, every other round in reverse order, and prints each
round's table and then the median of each figure: on a small machine the spread between
runs of one server can be as large as the gap measured between two.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

from common import free_port, machine
from serve_vllm_client import add_client_args, print_client_table, run_client

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TOPICS = ("the sea", "a city at night", "winter", "a library", "trains", "the moon", "bread")
MAX_TOKENS = (16, 32, 64, 128)
TARGETS = {"tok/s": 0.9, "ttft_p50": 1.5}
SIDES = {
    "vllm": "vllm serve",
    "rig_ray": "rig-ray serve",
    "rig_ray_proxy": "rig-ray serve --no-direct-ingress",
    "rig_ray_split": "rig-ray serve --split-deployments",
    "rig_ray_one": "rig-ray serve --one-deployment",
    "rig_ray_direct": "rig-ray serve --direct-ingress",
    "rig_ray_lean": "rig-ray serve --no-direct-ingress, Serve's lean path",
}
SIDE_FLAGS = {
    "rig_ray_proxy": ["--no-direct-ingress"],
    "rig_ray_split": ["--split-deployments"],
    "rig_ray_one": ["--one-deployment"],
    "rig_ray_direct": ["--direct-ingress"],
    "rig_ray_lean": ["--no-direct-ingress"],
}
LEAN_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
}
"""`rig_ray_lean`: the settings of Serve's `RAY_SERVE_THROUGHPUT_OPTIMIZED` that keep Serve's
proxy (user code and the proxy's router on their process's own loop, access logs buffered)."""


def ratio_rows(results: dict[str, dict[str, float]]) -> list[tuple[str, dict[str, float]]]:
    """The rig_ray sides to set against vLLM's (none without a vLLM side)."""
    if "vllm serve" not in results:
        return []
    return [(side, result) for side, result in results.items() if side != "vllm serve"]


class Reply(t.NamedTuple):
    ttft: float
    latency: float
    tokens: int


def start_server(
    side: str,
    folder: str,
    port: int,
    dtype: str,
    log: Path,
    niceness: int = 0,
) -> subprocess.Popen:
    python = sys.executable
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
    if side == "vllm":
        command = [
            python, "-m", "vllm.entrypoints.openai.api_server", "--model", folder,
            "--served-model-name", "bench", "--dtype", dtype, "--enforce-eager",
            "--max-model-len", "1024", "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
    else:
        # `rig-ray serve` starts Ray's workers (the replicas, and so the engine) at its own
        # niceness, as `vllm serve` runs; set here too, so other values can be tried.
        env["RAY_worker_niceness"] = str(niceness)
        if side == "rig_ray_lean":
            env.update(LEAN_ENV)
        identifier = f"vllm!{folder},dtype={dtype},enforce_eager=true,max_model_len=1024"
        command = [
            python, "-m", "rig_ray.cli", "serve", "-g", identifier, "--name", "bench",
            "--port", str(port), "--num-cpus", str(os.cpu_count() or 2),
        ]  # fmt: skip
        command += SIDE_FLAGS.get(side, [])
    handle = log.open("w")
    return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)


async def wait_ready(url: str, process: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}")
            try:
                if (await client.get(f"{url}/v1/models")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1)
    raise TimeoutError(f"no server at {url} after {timeout:.0f} s")


async def one_request(client: t.Any, index: int, max_tokens: int) -> Reply:
    content = f"Write a long story about {TOPICS[index % len(TOPICS)]} (#{index})."
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    stream = await client.chat.completions.create(
        model="bench",
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    latency = time.perf_counter() - started
    return Reply(ttft=latency if first is None else first, latency=latency, tokens=tokens)


async def load(url: str, requests: int, concurrency: int, seed: int) -> tuple[float, list[Reply]]:
    from openai import AsyncOpenAI

    sizes = random.Random(seed).choices(MAX_TOKENS, k=requests)
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", timeout=1800, max_retries=0)
    gate = asyncio.Semaphore(concurrency)

    async def gated(index: int) -> Reply:
        async with gate:
            return await one_request(client, index, sizes[index])

    started = time.perf_counter()
    replies = await asyncio.gather(*(gated(i) for i in range(requests)))
    wall = time.perf_counter() - started
    await client.close()
    return wall, list(replies)


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run_side(side: str, args: argparse.Namespace, folder: str, logs: Path) -> dict[str, float]:
    port = free_port()
    log = logs / f"{side}.log"
    process = start_server(side, folder, port, args.dtype, log, args.ray_niceness)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_ready(url, process, args.start_timeout))
        asyncio.run(load(url, args.concurrency, args.concurrency, args.seed + 1))  # warm-up
        if args.client == "vllm":
            return run_client(args, folder, port)
        wall, replies = asyncio.run(load(url, args.requests, args.concurrency, args.seed))
    except Exception:
        print(f"{side} failed; last lines of {log}:\n{log.read_text()[-3000:]}", flush=True)
        raise
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
    tokens = sum(r.tokens for r in replies)
    return {
        "tok/s": tokens / wall,
        "tokens": tokens,
        "ttft_p50": percentile([r.ttft for r in replies], 50),
        "ttft_p99": percentile([r.ttft for r in replies], 99),
        "e2e_p50": percentile([r.latency for r in replies], 50),
        "e2e_p99": percentile([r.latency for r in replies], 99),
    }


def print_table(results: dict[str, dict[str, float]]) -> None:
    columns = ("tok/s", "ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99")
    print(f"\n| server | tokens | {' | '.join(columns)} |")
    print(f"|---|---:|{'---:|' * len(columns)}")
    for side, result in results.items():
        cells = " | ".join(f"{result[c]:.2f}" for c in columns)
        print(f"| {side} | {result['tokens']:.0f} | {cells} |")
    for side, ours in ratio_rows(results):
        vllm = results["vllm serve"]
        ratios = " | ".join(f"{ours[c] / vllm[c]:.2f}x" for c in columns)
        print(f"| {side} / vLLM | | {ratios} |")
        verdicts = [
            f"tok/s {ours['tok/s'] / vllm['tok/s']:.2f}x (target >= {TARGETS['tok/s']})",
            f"TTFT p50 {ours['ttft_p50'] / vllm['ttft_p50']:.2f}x "
            f"(target <= {TARGETS['ttft_p50']})",
        ]
        print(f"{side}: " + "; ".join(verdicts))
    print("(latencies in seconds; TTFT: first content token)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16", help="engine dtype of both servers")
    parser.add_argument(
        "--sides",
        default="vllm,rig_ray,rig_ray_proxy",
        help=f"which servers, in order, of {', '.join(SIDES)}",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every side this many times, every other round in reverse order, and print "
        "the median of each figure too",
    )
    parser.add_argument("--start-timeout", type=float, default=600)
    parser.add_argument(
        "--ray-niceness",
        type=int,
        default=0,
        help="niceness of rig-ray's Ray workers (Ray's own default: 15); vllm serve runs at 0",
    )
    parser.add_argument(
        "--client", choices=("openai", "vllm"), default="openai", help="whose load client"
    )
    add_client_args(parser)
    args = parser.parse_args()

    from rig_ray.embedded import embedded_model_path

    folder = str(embedded_model_path())
    print(f"machine: {machine()}")
    if args.client == "vllm":
        print(
            f"SmolLM2-135M {args.dtype}, eager, max_model_len 1024; vLLM's benchmark client "
            f"({args.backend}): {args.prompts} random prompts, {args.input_len} in / "
            f"{args.output_len} out, {args.concurrency} at a time, ignore_eos"
        )
    else:
        print(
            f"SmolLM2-135M {args.dtype}, eager, max_model_len 1024; {args.requests} streamed "
            f"chats, {args.concurrency} at a time, max_tokens from {MAX_TOKENS} (ignore_eos)"
        )
    show = print_client_table if args.client == "vllm" else print_table
    sides = args.sides.split(",")
    rounds: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as logs:
        for number in range(args.rounds):
            # Every other round runs the sides in reverse, so no side always goes first.
            order = sides if number % 2 == 0 else sides[::-1]
            results: dict[str, dict[str, float]] = {}
            for side in order:
                results[SIDES[side]] = run_side(side, args, folder, Path(logs))
                print(f"{SIDES[side]}: {results[SIDES[side]]}", flush=True)
            rounds.append({SIDES[side]: results[SIDES[side]] for side in sides})
            if args.rounds > 1:
                print(f"\nround {number + 1} of {args.rounds} ({', '.join(order)}):")
            show(rounds[-1])
    if args.rounds > 1:
        print(f"\nmedian of each figure over the {args.rounds} rounds:")
        show(medians(rounds))


def medians(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each side's figures, each the median of its value in every round."""
    return {
        side: {key: statistics.median(r[side][key] for r in rounds) for key in figures}
        for side, figures in rounds[0].items()
    }


if __name__ == "__main__":
    main()
