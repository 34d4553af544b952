"""What the Serve path itself costs per streamed chunk, with no engine: the two-deployment app
(ingress + model) against `one_deployment=True` (routes and generator in one replica).

    .venv/bin/python benchmarks/serve_hops.py --streams 16 --chunks 128

A generator that streams `--chunks` one-word pieces as fast as it can (an `asyncio.sleep(0)`
between them) is served both ways in one local Ray (`--num-cpus`, Ray workers at niceness 0),
one app at a time; `--streams` streamed chats at once through httpx, `--rounds` times (the
best round counts). Printed: chunks/s through the whole path (proxy, replicas, SSE) and the
ratio one / two. No vLLM: it needs no lock and measures only the per-chunk path.

`--direct-ingress` starts Ray with Serve's `RAY_SERVE_ENABLE_DIRECT_INGRESS=1` (a Ray 2.60
feature flag: each ingress replica also answers HTTP itself, on a port of its own) and loads
the one-deployment app twice: through Serve's proxy, and straight at the replica's port.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import typing as t

from common import free_port, machine

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_worker_niceness", "0")


def burst_generator(chunks: int) -> t.Any:
    from rig_ray import GeneratedChunk, GeneratedMessage, GenerateParams, Generator, Message
    from rig_ray.generator.base import Usage

    class BurstGenerator(Generator):
        """Streams `chunks` pieces with no wait but a yield to the loop."""

        batches_continuously: t.ClassVar[bool] = True
        chunks: int = 128

        async def generate_messages(
            self, messages: t.Sequence[t.Sequence[Message]], params: t.Sequence[GenerateParams]
        ) -> list[GeneratedMessage | BaseException]:
            reply = Message(role="assistant", content="w " * self.chunks)
            return [GeneratedMessage(message=reply, stop_reason="stop") for _ in messages]

        async def stream_message(
            self, messages: t.Sequence[Message], params: GenerateParams | None = None
        ) -> t.AsyncIterator[GeneratedChunk]:
            for _ in range(self.chunks):
                await asyncio.sleep(0)
                yield GeneratedChunk(text="w ")
            usage = Usage(input_tokens=1, output_tokens=self.chunks)
            yield GeneratedChunk(stop_reason="stop", usage=usage)

    return BurstGenerator(model="burst", chunks=chunks)


async def one_stream(client: t.Any) -> int:
    body = {"model": "burst", "messages": [{"role": "user", "content": "go"}], "stream": True}
    pieces = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
        async for line in reply.aiter_lines():
            pieces += line.startswith('data: {"id"') and '"content":"w ' in line
    return pieces


async def load(url: str, streams: int) -> tuple[float, int]:
    import httpx

    limits = httpx.Limits(max_connections=streams)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await one_stream(client)  # warm-up
        started = time.perf_counter()
        counts = await asyncio.gather(*(one_stream(client) for _ in range(streams)))
        return time.perf_counter() - started, sum(counts)


def run_app(one: bool, args: argparse.Namespace, port: int) -> float:
    from ray import serve

    from rig_ray.serve import ServedModel, build_app

    model = ServedModel(generator=burst_generator(args.chunks), ray_actor_options={"num_cpus": 0.5})
    app = build_app(model, one_deployment=one)
    serve.run(app, name="hops", route_prefix="/")
    try:
        best = 0.0
        for _ in range(args.rounds):
            wall, chunks = asyncio.run(load(f"http://127.0.0.1:{port}", args.streams))
            if chunks != args.streams * args.chunks:
                raise RuntimeError(f"got {chunks} chunks, expected {args.streams * args.chunks}")
            best = max(best, chunks / wall)
        return best
    finally:
        serve.delete("hops")


def direct(args: argparse.Namespace, port: int, replica_port: int) -> tuple[float, float]:
    """chunks/s of the one-deployment app through the proxy and at the replica's own port."""
    from ray import serve

    from rig_ray.serve import ServedModel, build_app

    model = ServedModel(generator=burst_generator(args.chunks), ray_actor_options={"num_cpus": 0.5})
    serve.run(build_app(model, one_deployment=True), name="hops", route_prefix="/")
    try:
        rates = []
        for url in (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{replica_port}"):
            best = 0.0
            for _ in range(args.rounds):
                wall, chunks = asyncio.run(load(url, args.streams))
                if chunks != args.streams * args.chunks:
                    raise RuntimeError(f"got {chunks} chunks from {url}")
                best = max(best, chunks / wall)
            rates.append(best)
        return rates[0], rates[1]
    finally:
        serve.delete("hops")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--chunks", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-cpus", type=float, default=2)
    parser.add_argument("--direct-ingress", action="store_true")
    args = parser.parse_args()
    replica_port = free_port()
    if args.direct_ingress:  # read by Serve's processes as they start: set before Ray starts
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(replica_port)
        os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(replica_port + 100)

    import ray
    from ray import serve

    print(f"machine: {machine()}")
    print(f"{args.streams} streams x {args.chunks} chunks, best of {args.rounds} rounds")
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="ERROR")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        if args.direct_ingress:
            proxied, straight = direct(args, port, replica_port)
        else:
            two = run_app(False, args, port)
            one = run_app(True, args, port)
    finally:
        serve.shutdown()
        ray.shutdown()
    if args.direct_ingress:
        print("\n| one deployment, direct ingress on | chunks/s |\n|---|---:|")
        print(f"| through Serve's proxy | {proxied:.0f} |")
        print(f"| at the replica's own port | {straight:.0f} |")
        print(f"replica / proxy: {straight / proxied:.2f}x")
        return
    print("\n| app | chunks/s |\n|---|---:|")
    print(f"| ingress + model (two deployments) | {two:.0f} |")
    print(f"| one deployment | {one:.0f} |")
    print(f"one / two: {one / two:.2f}x")


if __name__ == "__main__":
    main()
