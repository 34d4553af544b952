"""Online latency of `rig-ray serve` with and without a large `/v1/batches` job on the same app.

    flock /tmp/vllm.lock .venv/bin/python benchmarks/batch_beside_online.py --requests 32

One `rig-ray serve` on vLLM (the embedded SmolLM2, `--dtype`, eager, max_model_len 1024) takes
the streamed chat load of `benchmarks/serve_vs_vllm.py` (`--requests` requests,
`--concurrency` in flight, max_tokens drawn from 16..128 with ignore_eos) twice: alone, and
while a batch of `--batch-lines` requests (`--batch-max-tokens` each, ignore_eos) runs on the
same deployment through `/v1/batches` (at most `--batch-max-in-flight` batch requests in the
engine at once). Printed: TTFT and end-to-end p50 / p99 of each load, their ratio, and the batch
lines finished during the loaded run (the batch must go on making progress). Target: TTFT p50
with the batch at most 1.5x without it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

from common import free_port, machine
from serve_vs_vllm import load, percentile, wait_ready

TARGET = 1.5


def start(
    folder: str, port: int, args: argparse.Namespace, storage: Path, log: Path
) -> subprocess.Popen[bytes]:
    identifier = f"vllm!{folder},dtype={args.dtype},enforce_eager=true,max_model_len=1024"
    command = [
        sys.executable, "-m", "rig_ray.cli", "serve", "-g", identifier, "--name", "bench",
        "--port", str(port), "--num-cpus", str(os.cpu_count() or 2),
        "--batch-storage", str(storage), "--batch-max-in-flight", str(args.batch_max_in_flight),
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def batch_file(lines: int, max_tokens: int) -> bytes:
    rows = []
    for number in range(lines):
        body = {
            "model": "bench",
            "messages": [{"role": "user", "content": f"Tell a long tale, part {number}."}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        line = {"custom_id": f"b{number}", "method": "POST", "url": "/v1/chat/completions"}
        rows.append(json.dumps({**line, "body": body}))
    return ("\n".join(rows) + "\n").encode()


def summary(replies: list[t.Any]) -> dict[str, float]:
    return {
        "ttft_p50": percentile([r.ttft for r in replies], 50),
        "ttft_p99": percentile([r.ttft for r in replies], 99),
        "e2e_p50": percentile([r.latency for r in replies], 50),
        "e2e_p99": percentile([r.latency for r in replies], 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch-lines", type=int, default=2000)
    parser.add_argument("--batch-max-tokens", type=int, default=64)
    parser.add_argument("--batch-max-in-flight", type=int, default=4)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from openai import OpenAI

    from rig_ray.embedded import embedded_model_path

    work = Path(tempfile.mkdtemp(prefix="batch-beside-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(machine())
    process = start(str(embedded_model_path()), port, args, work / "storage", work / "serve.log")
    try:
        asyncio.run(wait_ready(url, process, 600))
        asyncio.run(load(url, args.concurrency, args.concurrency, args.seed + 1))  # warm-up
        alone = summary(asyncio.run(load(url, args.requests, args.concurrency, args.seed))[1])
        print(f"alone: {alone}", flush=True)
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=600)
        data = batch_file(args.batch_lines, args.batch_max_tokens)
        uploaded = client.files.create(file=("batch.jsonl", data), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 600
        while (counts := client.batches.retrieve(batch.id).request_counts).completed < 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the batch finished no line in 600 s: {counts}")
            time.sleep(0.5)
        before = client.batches.retrieve(batch.id).request_counts.completed
        loaded = summary(asyncio.run(load(url, args.requests, args.concurrency, args.seed))[1])
        after = client.batches.retrieve(batch.id).request_counts.completed
        print(f"beside the batch: {loaded}; batch lines {before} -> {after}", flush=True)
        client.batches.cancel(batch.id)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
    print(f"\n| load | {' | '.join(alone)} |")
    print(f"|---|{'---:|' * len(alone)}")
    print(f"| alone | {' | '.join(f'{v:.2f}' for v in alone.values())} |")
    print(f"| beside the batch | {' | '.join(f'{v:.2f}' for v in loaded.values())} |")
    ratio = loaded["ttft_p50"] / alone["ttft_p50"]
    print(
        f"\nTTFT p50 with the batch / without: {ratio:.2f}x (target <= {TARGET}); the batch "
        f"finished {after - before} lines during the loaded run (latencies in seconds)"
    )


if __name__ == "__main__":
    main()
