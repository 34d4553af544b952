"""Requests/s and p50/p99 latency of the Serve endpoint at concurrency 1, 8 and 32, with
request batching (`@serve.batch`, max_batch_size 32) and without (max_batch_size 1).

    .venv/bin/python benchmarks/serve_load.py --requests 32 --max-tokens 16 --repeats 1

Each side serves the embedded SmolLM2 through transformers from one replica that may use every
core of the machine, behind its own ingress and the same HTTP proxy; only max_batch_size
differs. Both are up at once and take turns level by level (a shared machine's noise falls on
both). Each request is a short chat over real HTTP (httpx, `concurrency` requests in flight)
and generates exactly `--max-tokens` tokens (greedy, `min_new_tokens`), so both sides do the
same work. Ratios are batched / unbatched: above 1 for req/s and below 1 for latency mean
batching helps.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
import time
import typing as t

from common import free_port, machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

CONCURRENCY = (1, 8, 32)
TOPICS = ("the sea", "a city at night", "winter", "a library", "trains", "the moon", "bread")


class Level(t.NamedTuple):
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]
    batch_sizes: list[int]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]


async def load(url: str, model: str, requests: int, concurrency: int) -> tuple[float, list[float]]:
    """Send `requests` chats, `concurrency` at a time; wall seconds and each one's latency."""
    import httpx

    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            content = f"Write one sentence about {TOPICS[i % len(TOPICS)]} (#{i})."
            body = {"model": model, "messages": [{"role": "user", "content": content}]}
            started = time.perf_counter()
            reply = await client.post("/v1/chat/completions", json=body)
            latencies.append(time.perf_counter() - started)
            reply.raise_for_status()

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


def deploy(side: str, max_batch_size: int, args: argparse.Namespace) -> t.Any:
    """Run one side as its own app under /<side>; returns its deployment's stats method."""
    from ray import serve

    import rig_ray as rr
    from rig_ray.serve import ServedModel, build_app, deployment_name

    generator = rr.get_generator(
        f"transformers!smollm2-135m,max_tokens={args.max_tokens},temperature=0,device=cpu",
        params=rr.GenerateParams(extra={"min_new_tokens": args.max_tokens}),
    )
    model = ServedModel(
        generator=generator,
        name=side,
        ray_actor_options={"num_cpus": args.num_cpus},
        max_batch_size=max_batch_size,
        max_ongoing_requests=64,
        max_queued_requests=-1,
    )
    serve.run(build_app(model), name=side, route_prefix=f"/{side}")
    return serve.get_deployment_handle(deployment_name(side), app_name=side).stats


def run_level(side: str, stats: t.Any, concurrency: int, requests: int, url: str) -> Level:
    before = len(stats.remote().result()["recent"])
    seconds, latencies = asyncio.run(load(f"{url}/{side}", side, requests, concurrency))
    sizes = stats.remote().result()["recent"][before:]
    print(f"  {side:9} c={concurrency:<2}: {requests / seconds:6.2f} req/s", flush=True)
    return Level(concurrency, requests, seconds, latencies, sizes)


def measure(args: argparse.Namespace, url: str) -> dict[str, list[Level]]:
    """Both sides up at once (each replica has the cores while the other idles); they take
    turns level by level, `--repeats` times, and each keeps its fastest run of a level."""
    sides = {"batched": deploy("batched", 32, args), "unbatched": deploy("unbatched", 1, args)}
    for side in sides:
        asyncio.run(load(f"{url}/{side}", side, 4, 2))  # warm-up
    best: dict[str, list[Level]] = {side: [] for side in sides}
    for repeat in range(args.repeats):
        for index, concurrency in enumerate(CONCURRENCY):
            requests = max(args.requests, 2 * concurrency)
            for side, stats in sides.items():
                level = run_level(side, stats, concurrency, requests, url)
                if repeat == 0:
                    best[side].append(level)
                elif level.rate > best[side][index].rate:
                    best[side][index] = level
    return best


def print_table(batched: list[Level], unbatched: list[Level]) -> None:
    header = (
        f"{'conc':>4} | {'req/s b':>8} {'req/s u':>8} {'ratio':>6} | {'p50 b':>6} {'p50 u':>6} "
        f"{'ratio':>6} | {'p99 b':>6} {'p99 u':>6} {'ratio':>6} | {'mean batch':>10}"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    for b, u in zip(batched, unbatched, strict=True):
        p50b, p50u, p99b, p99u = (
            b.percentile(50),
            u.percentile(50),
            b.percentile(99),
            u.percentile(99),
        )
        mean_batch = statistics.fmean(b.batch_sizes) if b.batch_sizes else 0.0
        print(
            f"{b.concurrency:>4} | {b.rate:8.2f} {u.rate:8.2f} {b.rate / u.rate:6.2f} | "
            f"{p50b:6.2f} {p50u:6.2f} {p50b / p50u:6.2f} | {p99b:6.2f} {p99u:6.2f} "
            f"{p99b / p99u:6.2f} | {mean_batch:10.1f}"
        )
    print("b: batched (max_batch_size 32), u: unbatched (1); latencies in seconds;")
    print("ratio: batched / unbatched; mean batch: items per generate call on the batched side")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=32, help="requests per level (at least 2 x concurrency)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="turns; each level keeps its best")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per reply")
    parser.add_argument("--num-cpus", type=float, default=float(os.cpu_count() or 1))
    args = parser.parse_args()

    import ray
    import torch
    import transformers
    from ray import serve

    from rig_ray.embedded import embedded_model_path

    embedded_model_path()  # converted once, before the replicas need it
    print(f"Machine: {machine()}; {datetime.date.today()}")
    print(
        f"ray {ray.__version__}, torch {torch.__version__}, transformers {transformers.__version__}"
    )
    print(
        f"SmolLM2-135M bf16 (transformers), {args.requests}+ chat requests x {args.max_tokens} "
        f"tokens per level, one replica per side with {args.num_cpus:g} CPUs"
    )
    # Room for both replicas: only one side runs at a time.
    ray.init(
        address="local", num_cpus=int(2 * args.num_cpus), include_dashboard=False,
        logging_level="warning", log_to_driver=False,
    )  # fmt: skip
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        best = measure(args, f"http://127.0.0.1:{port}")
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"\nMachine at the end: load average {os.getloadavg()[0]:.1f}")
    print_table(best["batched"], best["unbatched"])


if __name__ == "__main__":
    main()
