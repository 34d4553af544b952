"""Generated tokens/s of a batch job through rig_ray against the raw engine and Ray Data LLM.

    .venv/bin/python benchmarks/batch_throughput.py --prompts 256 --max-tokens 64 --engine vllm

The same chat prompts (the embedded SmolLM2, greedy, at most `--max-tokens` new tokens, stopping
at end of sequence as rig_ray does) go through each side in turn, every side in a fresh process
of its own, so no engine, thread team or Ray session carries over:
- (a) raw: vLLM `LLM.chat` on the whole list (and, taking turns with it, in calls of
  `--batch-size` rows, as batch.run makes them); transformers `model.generate` on the
  chat-templated prompts in batches of `--batch-size`, left-padded;
- (b) rig_ray generator: `generate_messages` of a generator built from its identifier, on the
  whole list (vLLM) or in batches of `--batch-size` (transformers: as batch.run calls it);
- (c) `rig_ray.batch.run` from a JSONL file to Parquet: one replica in `ray.init(num_cpus=2)`,
  `--batch-size` rows per engine call, progress off. The actor takes `--num-cpus` 1, not 2:
  Ray Data's read tasks need a CPU of their own, and with both held by the actor the job
  waits forever. Every side runs with OMP_NUM_THREADS=`--engine-threads` (2), so the actor's
  engine gets the threads the other sides get (Ray would give it its num_cpus);
- (d) Ray Data LLM (vLLM only): `build_processor` + `vLLMEngineProcessorConfig` on the same JSONL,
  written to Parquet, with the engine settings of (a), the engine in a `{"CPU": 1}` bundle
  and the CPU stages at 0.1 CPU (at their default of 1 CPU each, the job never starts).
Rates are generated tokens (each engine's own counts) per second; loads are timed apart.
(a) and (b) time the load, warm up, then keep the fastest of `--repeats` runs. (c) and (d)
start actors and load the model inside every run, so each repeat is a whole job, reported
three ways: end to end (the job's wall time); generation, from the first request's arrival in
the engine (vLLM's own request metrics) to the job's end, with the time before it as "load";
and the engine calls alone (the sum of their own times: what is left for transformers, whose
engine keeps no timestamps).
Targets: (b) >= 0.95x (a), (c) generation >= 0.85x (a).

`--workload mixed` gives each row its own `max_tokens`, drawn (seeded) from 16..256: raw vLLM
gets one SamplingParams per row, the generator per-item params, batch.run a `params` column
(`params_column="params"`) and Ray Data LLM per-row `sampling_params`. There a continuously
batching engine refills the slots of finished rows while longer ones run; targets: (c)
generation >= 0.95x (a) and >= 1.0x (d). `--dtype` sets every side's engine dtype (bfloat16 by
default, the figures recorded before; float32 runs several times faster on CPUs without native
bf16).

`--parse-as` measures instead what parsing and parse retries cost next to plain generation
(`benchmarks/parse_cost.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

from common import machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray starts its workers (the (c) and (d) actors, and so their engines) at niceness 15, the
# raw side runs at 0: on a machine shared with other work, that alone would decide the race.
os.environ.setdefault("RAY_worker_niceness", "0")

TOPICS = ("the sea", "a city at night", "winter", "a library", "trains", "the moon", "bread")
VLLM_ENGINE = {
    "dtype": "bfloat16",
    "enforce_eager": True,
    "max_model_len": 1024,
    "gpu_memory_utilization": 0.1,  # on CPU: the share of RAM for the KV cache (2.4 GiB here)
}
"""Engine settings of every vLLM side: the same engine, however it is driven."""
TARGETS = {"b": 0.95, "c": 0.85}
MIXED_TARGETS = {"b": 0.95, "c": 0.95}
MIXED_TOKENS = (16, 256)
"""Bounds of a row's max_tokens in the mixed workload."""

Result = dict[str, t.Any]


def make_prompts(count: int) -> list[str]:
    return [
        f"Write a short paragraph about {TOPICS[i % len(TOPICS)]} (#{i})." for i in range(count)
    ]


def token_limits(args: argparse.Namespace) -> list[int]:
    """Each row's max_tokens: all `--max-tokens`, or (mixed) drawn from MIXED_TOKENS."""
    if args.workload == "fixed":
        return [args.max_tokens] * args.prompts
    draw = random.Random(0)
    return [draw.randint(*MIXED_TOKENS) for _ in range(args.prompts)]


def vllm_engine(args: argparse.Namespace) -> dict[str, t.Any]:
    settings = {**VLLM_ENGINE, "dtype": args.dtype}
    if args.dtype in ("float32", "float"):  # a float32 KV cache needs a larger share
        settings["gpu_memory_utilization"] = 0.3
    return settings


def identifier(engine: str, args: argparse.Namespace) -> str:
    if engine == "vllm":
        settings = ",".join(f"{key}={value}" for key, value in vllm_engine(args).items())
        return f"vllm!smollm2-135m,{settings}"
    device = "cuda" if getattr(args, "gpus", 0) else "cpu"
    return f"transformers!smollm2-135m,device={device},dtype={args.dtype}"


def take_turns(runs: list[t.Callable[[], int]], repeats: int) -> list[tuple[float, int]]:
    """Each run's fastest (seconds, tokens) of `repeats`, the runs taking turns."""
    best = [(float("inf"), 0)] * len(runs)
    for _ in range(repeats):
        for index, run in enumerate(runs):
            started = time.perf_counter()
            tokens = run()
            best[index] = min(best[index], (time.perf_counter() - started, tokens))
    return best


def fastest(run: t.Callable[[], int], repeats: int) -> tuple[float, int]:
    return take_turns([run], repeats)[0]


def chunks(items: list[t.Any], size: int) -> list[list[t.Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# --- the sides, each run in a child process (`--side`) --------------------------------------


def side_raw_vllm(args: argparse.Namespace) -> Result:
    from vllm import LLM, SamplingParams

    from rig_ray.embedded import embedded_model_path

    conversations = [[{"role": "user", "content": p}] for p in make_prompts(args.prompts)]
    started = time.perf_counter()
    llm = LLM(model=str(embedded_model_path()), **vllm_engine(args))
    load_s = time.perf_counter() - started
    sampling = [SamplingParams(temperature=0, max_tokens=m) for m in token_limits(args)]

    def run(items: list[t.Any] = conversations, size: int = len(conversations)) -> int:
        tokens = 0
        for start in range(0, len(items), size):
            batch = items[start : start + size]
            outputs = llm.chat(batch, sampling[start : start + len(batch)], use_tqdm=False)
            tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
        return tokens

    run(conversations[:8])  # warm-up
    # Also in calls of --batch-size, as batch.run makes them; the two take turns.
    whole, batched = take_turns([run, lambda: run(size=args.batch_size)], args.repeats)
    llm.llm_engine.engine_core.shutdown()  # the engine-core process ends here
    return {
        "load_s": load_s,
        "seconds": whole[0],
        "tokens": whole[1],
        "batched_seconds": batched[0],
        "batched_tokens": batched[1],
        "batch_size": args.batch_size,
    }


def side_raw_transformers(args: argparse.Namespace) -> Result:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rig_ray.embedded import embedded_model_path

    path = str(embedded_model_path())
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).eval()
    load_s = time.perf_counter() - started
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ends = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    eos = model.generation_config.eos_token_id
    ends.update(eos if isinstance(eos, list) else [eos])
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in make_prompts(args.prompts)
    ]

    def generated(row: list[int]) -> int:
        """Tokens of one row up to and with its end token; the padding after it is not."""
        return next((i + 1 for i, token in enumerate(row) if token in ends), len(row))

    def run(items: list[str] = prompts) -> int:
        tokens = 0
        for batch in chunks(items, args.batch_size):
            encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                out = model.generate(
                    **encoded,
                    max_new_tokens=args.max_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            rows = out[:, encoded["input_ids"].shape[1] :].tolist()
            tokens += sum(generated(row) for row in rows)
        return tokens

    run(prompts[:8])  # warm-up
    seconds, tokens = fastest(run, args.repeats)
    return {"load_s": load_s, "seconds": seconds, "tokens": tokens}


def side_generator(args: argparse.Namespace) -> Result:
    import rig_ray as rr

    generator = rr.get_generator(identifier(args.engine, args))
    started = time.perf_counter()
    generator.load()
    load_s = time.perf_counter() - started
    conversations = [[rr.Message(role="user", content=p)] for p in make_prompts(args.prompts)]
    params = [rr.GenerateParams(temperature=0, max_tokens=m) for m in token_limits(args)]
    size = len(conversations) if args.engine == "vllm" else args.batch_size

    async def generate(items: list[list[rr.Message]]) -> int:
        tokens = 0
        for start in range(0, len(items), size):
            batch = items[start : start + size]
            results = await generator.generate_messages(batch, params[start : start + len(batch)])
            for result in results:
                if isinstance(result, BaseException):
                    raise result
                tokens += result.usage.output_tokens
        return tokens

    asyncio.run(generate(conversations[:8]))  # warm-up
    seconds, tokens = fastest(lambda: asyncio.run(generate(conversations)), args.repeats)
    generator.unload()
    return {"load_s": load_s, "seconds": seconds, "tokens": tokens}


Job = tuple[float, float | None, float | None, int]
"""One Ray-side job: its start, the first request's arrival in the engine (None where the
engine keeps no timestamps), the sum of its engine calls' times (None where calls overlap),
and its generated tokens."""


def side_batch_run(args: argparse.Namespace) -> Result:
    import pyarrow.parquet as pq

    import rig_ray as rr
    from rig_ray.batch import run

    def once(source: str, folder: str) -> Job:
        started = time.time()
        summary = run(
            source,
            folder,
            generator=identifier(args.engine, args),
            template="$prompt",
            num_generations=1,
            params=rr.GenerateParams(temperature=0, max_tokens=args.max_tokens),
            params_column="params",
            replicas=1,
            num_cpus=args.num_cpus,
            num_gpus=args.gpus or None,
            batch_size=args.batch_size,
            progress=False,
        )
        if summary.failed:
            raise RuntimeError(f"{summary.failed} generations failed")
        table = pq.read_table(folder, columns=["latency_s", "metadata"])
        # vLLM's request metrics (in `metadata`) hold each request's arrival time.
        metrics = [json.loads(m).get("metrics") or {} for m in table["metadata"].to_pylist() if m]
        arrivals = [m["arrival_time"] for m in metrics if "arrival_time" in m]
        # Every row of one engine call carries that call's latency: one sum term per call.
        engine_s = sum(set(table["latency_s"].to_pylist()))
        return started, min(arrivals, default=None), engine_s, summary.output_tokens

    return ray_side(args, once)


def side_ray_data_llm(args: argparse.Namespace) -> Result:
    import pyarrow.parquet as pq
    import ray.data
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from rig_ray.embedded import embedded_model_path

    light = {"num_cpus": 0.1}  # the CPU stages' actors: the engine's bundle takes a whole CPU

    def once(source: str, folder: str) -> Job:
        started = time.time()
        config = vLLMEngineProcessorConfig(
            model_source=str(embedded_model_path()),
            engine_kwargs=vllm_engine(args),
            placement_group_config={"bundles": [{"CPU": 1, **({"GPU": 1} if args.gpus else {})}]},
            batch_size=args.batch_size,
            concurrency=1,
            chat_template_stage=light,
            tokenize_stage=light,
            detokenize_stage=light,
        )
        processor = build_processor(
            config,
            preprocess=lambda row: {
                "id": row["id"],
                "messages": [{"role": "user", "content": row["prompt"]}],
                "sampling_params": {"temperature": 0, "max_tokens": row["params"]["max_tokens"]},
            },
            postprocess=lambda row: {
                "id": row["id"],
                "text": row["generated_text"],
                "output_tokens": row["num_generated_tokens"],
                "arrival_time": row["metrics"]["arrival_time"],
            },
            preprocess_map_kwargs=light,
            postprocess_map_kwargs=light,
        )
        dataset = ray.data.read_json(source, ray_remote_args=light)
        processor(dataset).write_parquet(folder, ray_remote_args=light)
        table = pq.read_table(folder, columns=["output_tokens", "arrival_time"])
        tokens = int(sum(table["output_tokens"].to_pylist()))
        # Its batches overlap in the engine, so their times do not add up: no engine time.
        return started, min(table["arrival_time"].to_pylist()), None, tokens

    return ray_side(args, once)


def ray_side(args: argparse.Namespace, once: t.Callable[[str, str], Job]) -> Result:
    """Run the whole job `--repeats` times (each starts its own actors and loads the model)
    and keep the run with the shortest generation time: from the first request's arrival in
    the engine to the job's end, or, where the engine keeps no timestamps (transformers), the
    sum of the engine calls' times."""
    import ray
    from ray.data import DataContext

    # address="local": a cluster of our own, never one another program started here
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=args.gpus,
        include_dashboard=False,
        logging_level="warning",
    )
    DataContext.get_current().enable_progress_bars = False
    best: Result = {"seconds": float("inf")}
    try:
        with tempfile.TemporaryDirectory() as folder:
            source = Path(folder, "prompts.jsonl")
            rows = zip(make_prompts(args.prompts), token_limits(args), strict=True)
            lines = [
                json.dumps({"id": i, "prompt": p, "params": {"max_tokens": m}})
                for i, (p, m) in enumerate(rows)
            ]
            source.write_text("\n".join(lines) + "\n")
            for repeat in range(args.repeats):
                started, first, engine_s, tokens = once(str(source), f"{folder}/out-{repeat}")
                ended = time.time()
                run = {
                    "load_s": None if first is None else first - started,
                    "seconds": t.cast(float, engine_s) if first is None else ended - first,
                    "engine_s": engine_s,
                    "job_s": ended - started,
                    "tokens": tokens,
                }
                best = min(best, run, key=lambda r: r["seconds"])
    finally:
        ray.shutdown()
    return best


SIDES: dict[str, tuple[str, t.Callable[[argparse.Namespace], Result]]] = {
    "a": ("(a) raw {engine}", side_raw_vllm),
    "b": ("(b) rig_ray generator", side_generator),
    "c": ("(c) rig_ray batch.run", side_batch_run),
    "d": ("(d) Ray Data LLM", side_ray_data_llm),
}


def child(args: argparse.Namespace) -> None:
    """Run one side and write its result as JSON to `--result`. A side that runs past
    `--timeout` raises inside, so the Ray sides still shut their cluster and actors down."""

    def expire(*_: t.Any) -> None:
        raise TimeoutError(f"the side ran past --timeout {args.timeout}s")

    signal.signal(signal.SIGALRM, expire)
    signal.alarm(args.timeout)
    side = args.side
    fn = side_raw_transformers if side == "a" and args.engine == "transformers" else SIDES[side][1]
    Path(args.result).write_text(json.dumps(fn(args)))


# --- the driver: one child process per side, in turn ----------------------------------------


def run_side(args: argparse.Namespace, engine: str, side: str) -> Result:
    """One side in a child process; its result, or the error line of its log."""
    with tempfile.TemporaryDirectory() as folder:
        result, log = Path(folder, "result.json"), Path(folder, "side.log")
        passed = ("prompts", "max_tokens", "batch_size", "num_cpus", "repeats", "timeout")
        passed += ("workload", "dtype", "gpus")
        command = [sys.executable, __file__, "--side", side, "--engine", engine]
        command += ["--result", str(result)]
        for name in passed:
            command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        env = dict(os.environ)
        if args.engine_threads:  # Ray would set its actors' OMP_NUM_THREADS to their num_cpus
            env["OMP_NUM_THREADS"] = str(args.engine_threads)
        started = time.perf_counter()
        with open(log, "w") as out:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
        wall = time.perf_counter() - started
        if code == 0 and result.exists():
            return {**json.loads(result.read_text()), "wall_s": wall}
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        if args.verbose:
            print("\n".join(lines[-40:]))
        error = next(
            (line for line in reversed(lines) if "Error" in line or "Exception" in line),
            lines[-1] if lines else f"exit code {code}",
        )
        return {"error": error.strip()[:160], "wall_s": wall}


def table_lines(engine: str, side: str, result: Result) -> list[tuple[str, str, float, int]]:
    """(label, load column, seconds, tokens) per printed line: raw vLLM adds a line for calls
    of --batch-size rows; a Ray side has an end-to-end line, a generation line (first request
    in to job done) where the engine keeps timestamps, and an engine-calls-only line."""
    name = SIDES[side][0].format(engine=engine) + ("" if side == "a" else f" ({engine})")
    tokens = result["tokens"]
    load = "-" if result["load_s"] is None else f"{result['load_s']:7.1f}"
    if "job_s" in result:
        lines = [(f"{name}, end to end", "", result["job_s"], tokens)]
        if result["load_s"] is not None:
            lines.append(("  generation", load, result["seconds"], tokens))
        if result["engine_s"] is not None:
            lines.append(("  engine calls only", "", result["engine_s"], tokens))
        return lines
    lines = [(name, load, result["seconds"], tokens)]
    if "batched_seconds" in result:
        label = f"  in calls of {result['batch_size']} rows"
        lines.append((label, "", result["batched_seconds"], result["batched_tokens"]))
    return lines


def print_table(rows: list[tuple[str, str, Result]], targets: dict[str, float]) -> None:
    header = f"{'run':48} {'load s':>7} {'seconds':>7} {'tokens':>7} {'tok/s':>7} {'vs (a)':>6}"
    print(f"\n{header}  target")
    raw_rate: dict[str, float] = {}
    for engine, side, result in rows:
        if "error" in result:
            name = SIDES[side][0].format(engine=engine)
            print(f"{name + f' ({engine})':48} failed: {result['error']}")
            continue
        lines = table_lines(engine, side, result)
        for index, (label, load, seconds, tokens) in enumerate(lines):
            rate = tokens / seconds
            raw_rate.setdefault(engine, rate if side == "a" else float("nan"))
            ratio = rate / raw_rate[engine]
            target = ""
            if side in targets and index == min(1, len(lines) - 1):
                verdict = "ok" if ratio >= targets[side] else "MISSED"
                target = f">= {targets[side]:.2f} {verdict}"
            numbers = f"{seconds:7.1f} {tokens:7d} {rate:7.1f} {ratio:6.2f}"
            print(f"{label:48} {load:>7} {numbers}  {target}")
    print_c_vs_d(rows)
    print(
        "\nload s: (a), (b): loading the model; (c), (d): from the job's start to the first"
        "\nrequest's arrival in the engine (Ray Data start-up, actor start, model load)."
        "\nGeneration: from then to the job's end. Engine calls only: the sum of the engine"
        "\ncalls' own times (the target line where the engine keeps no timestamps)."
    )


def print_c_vs_d(rows: list[tuple[str, str, Result]]) -> None:
    """batch.run's generation rate against Ray Data LLM's, where both ran (target >= 1.0)."""
    found = {side: result for engine, side, result in rows if engine == "vllm"}
    c, d = found.get("c"), found.get("d")
    if c is None or d is None or "error" in c or "error" in d:
        return
    ratio = (c["tokens"] / c["seconds"]) / (d["tokens"] / d["seconds"])
    verdict = "ok" if ratio >= 1.0 else "MISSED"
    print(f"\n(c) / (d) generation tok/s: {ratio:.2f}  target >= 1.00 {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--workload",
        choices=("fixed", "mixed"),
        default="fixed",
        help="fixed: every row --max-tokens; mixed: each row's drawn from 16..256",
    )
    parser.add_argument("--dtype", default="bfloat16", help="engine dtype of every side")
    parser.add_argument("--engine", choices=("vllm", "transformers", "both"), default="vllm")
    parser.add_argument("--sides", default="abcd", help="which of a, b, c, d to run")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="rows per engine call in (c), (d)"
    )
    parser.add_argument("--num-cpus", type=float, default=1, help="CPUs of the (c) actor")
    parser.add_argument(
        "--gpus",
        type=int,
        default=0,
        help="on a GPU machine: 1 gives Ray one GPU and the (c) actor and (d) engine one each",
    )
    parser.add_argument(
        "--engine-threads",
        type=int,
        default=2,
        help="OMP_NUM_THREADS of every side (0: unset; Ray then uses an actor's num_cpus)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, in its process")
    parser.add_argument(
        "--rounds", type=int, default=1, help="times the sides take turns; each keeps its best"
    )
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one side may take")
    parser.add_argument("--verbose", action="store_true", help="print a failed side's log tail")
    parser.add_argument(
        "--parse-as",
        action="store_true",
        help="instead: the cost of parsing and parse retries next to plain generation "
        "(benchmarks/parse_cost.py), on --engine vllm or transformers",
    )
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workload == "mixed" and args.engine != "vllm":
        parser.error("--workload mixed is for --engine vllm (transformers batches equal params)")
    if args.parse_as:
        import parse_cost  # beside this script, so on sys.path already

        parse_cost.run(args, machine())
        return
    if args.side:
        child(args)
        return

    from rig_ray.embedded import embedded_model_path

    embedded_model_path()  # convert once here, not inside a timed side
    engines = ["vllm", "transformers"] if args.engine == "both" else [args.engine]
    print(
        f"SmolLM2-135M {args.dtype}, {args.prompts} chat prompts x "
        f"{'16..256 (mixed)' if args.workload == 'mixed' else f'<= {args.max_tokens}'} "
        "tokens, greedy; "
        f"batch size {args.batch_size}, (c) actor num_cpus={args.num_cpus:g}, "
        f"best of {args.repeats} runs x {args.rounds} round(s)"
    )
    print(f"machine: {machine()}")
    best: dict[tuple[str, str], Result] = {}
    for round_ in range(args.rounds):
        for engine in engines:
            for side in args.sides:
                if side == "d" and engine != "vllm":
                    continue
                result = run_side(args, engine, side)
                seconds = result.get("seconds", float("inf"))
                if seconds < best.get((engine, side), {}).get("seconds", float("inf")):
                    best[(engine, side)] = result
                best.setdefault((engine, side), result)
                done = result.get("error") or f"{seconds:.1f}s, {result['tokens']} tokens"
                wall = result["wall_s"]
                print(f"round {round_ + 1}: {engine} ({side}) in {wall:.0f}s: {done}", flush=True)
    rows = [(engine, side, result) for (engine, side), result in best.items()]
    print_table(rows, MIXED_TARGETS if args.workload == "mixed" else TARGETS)
    failed = [f"{engine} ({side})" for engine, side, result in rows if "error" in result]
    if failed:  # a side that did not run is a failed check, not a row to read past
        sys.exit(f"sides that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
