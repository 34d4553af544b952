"""The load of `serve_vs_vllm.py --client vllm`: vLLM's own benchmark client
(`vllm.benchmarks.serve`, what `vllm bench serve` runs) against one server, in this process."""

from __future__ import annotations

import argparse
import typing as t

TARGETS = {"tok/s": ("max", 1.0), "ttft_p50": ("min", 1.2), "tpot_p50": ("min", 1.1)}
"""rig_ray / vLLM: at least (max) or at most (min) this."""
COLUMNS = ("tok/s", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "itl_p50", "e2e_p50")


def add_client_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--client vllm")
    group.add_argument("--prompts", type=int, default=64, help="requests of the random dataset")
    group.add_argument("--input-len", type=int, default=128)
    group.add_argument("--output-len", type=int, default=128)
    group.add_argument(
        "--backend",
        default="openai",
        choices=("openai", "openai-chat"),
        help="openai: /v1/completions; openai-chat: /v1/chat/completions",
    )


def run_client(args: argparse.Namespace, folder: str, port: int) -> dict[str, float]:
    """vLLM's benchmark client's figures (seconds, tok/s) for the server on `port`."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    endpoint = "/v1/chat/completions" if args.backend == "openai-chat" else "/v1/completions"
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    client_args = parser.parse_args(
        [
            "--backend", args.backend, "--endpoint", endpoint,
            "--host", "127.0.0.1", "--port", str(port),
            "--model", folder, "--served-model-name", "bench", "--tokenizer", folder,
            "--dataset-name", "random", "--num-prompts", str(args.prompts),
            "--random-input-len", str(args.input_len),
            "--random-output-len", str(args.output_len),
            "--max-concurrency", str(args.concurrency), "--ignore-eos",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
            "--seed", str(args.seed), "--disable-tqdm",
        ]
    )  # fmt: skip
    result = main(client_args)
    if result["completed"] != args.prompts:
        errors = [error for error in result["errors"] if error]
        raise RuntimeError(f"{len(errors)} requests failed; first: {errors[:1]}")
    ms = 1000.0
    return {
        "tok/s": result["output_throughput"],
        "tokens": result["total_output_tokens"],
        "ttft_p50": result["median_ttft_ms"] / ms,
        "ttft_p99": result["p99_ttft_ms"] / ms,
        "tpot_p50": result["median_tpot_ms"] / ms,
        "tpot_p99": result["p99_tpot_ms"] / ms,
        "itl_p50": result["median_itl_ms"] / ms,
        "e2e_p50": result["median_e2el_ms"] / ms,
    }


def print_client_table(results: dict[str, dict[str, float]]) -> None:
    print(f"\n| server | tokens | {' | '.join(COLUMNS)} |")
    print(f"|---|---:|{'---:|' * len(COLUMNS)}")
    for side, result in results.items():
        cells = " | ".join(_cell(column, result[column]) for column in COLUMNS)
        print(f"| {side} | {result['tokens']:.0f} | {cells} |")
    vllm = results.get("vllm serve")
    verdicts = []
    for side, ours in results.items():
        if vllm is None or ours is vllm:
            continue
        ratios = " | ".join(f"{ours[c] / vllm[c]:.2f}x" for c in COLUMNS)
        print(f"| {side} / vLLM | | {ratios} |")
        verdicts.append(f"{side}: " + "; ".join(_verdict(n, ours[n] / vllm[n]) for n in TARGETS))
    print("\n" + "\n".join(verdicts))
    print("(tok/s: output tokens per second; latencies in ms; TPOT: time per output token)")


def _cell(column: str, value: float) -> str:
    return f"{value:.1f}" if column == "tok/s" else f"{value * 1000:.1f}"


def _verdict(name: str, ratio: float) -> str:
    sense, bound = TARGETS[name]
    held = ratio >= bound if sense == "max" else ratio <= bound
    sign = ">=" if sense == "max" else "<="
    return f"{name} {ratio:.2f}x (target {sign} {bound}: {'held' if held else 'MISSED'})"


__all__: t.Sequence[str] = ("add_client_args", "print_client_table", "run_client")
