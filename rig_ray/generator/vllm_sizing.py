"""How vLLM sizes an engine for a job, read from vLLM's own default table without loading one.

vLLM picks `max_num_seqs` and `max_num_batched_tokens` by the engine's usage context and the
platform it runs on (`EngineArgs.get_batch_defaults`): `vllm.LLM` starts with `LLM_CLASS`,
`vllm serve` with `OPENAI_API_SERVER`. rig_ray starts generators, batch jobs and `remote()`
actors as `LLM_CLASS` and Serve replicas as `OPENAI_API_SERVER`, so its engines get the same
sizes as vLLM's own entry points. The table is read only when a figure is asked for, and in a
child process where this one has not imported vLLM (see `batch_defaults`).
"""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
import typing as t

if t.TYPE_CHECKING:
    from rig_ray.generator.base import Generator

UsageName = t.Literal["LLM_CLASS", "OPENAI_API_SERVER"]
OFFLINE: UsageName = "LLM_CLASS"
"""vLLM's context for `vllm.LLM`: generators, batch jobs and `remote()` actors."""
SERVER: UsageName = "OPENAI_API_SERVER"
"""vLLM's context for `vllm serve`: Serve replicas."""
IN_FLIGHT_FACTOR = 1.1
"""Requests kept in flight per engine, as a share of its max_num_seqs (Ray Data LLM's rule):
a little more than the engine runs at once, so a finished sequence is replaced at once."""


def usage_context(name: UsageName) -> t.Any:
    """vLLM's `UsageContext` member of that name."""
    from vllm.usage.usage_lib import UsageContext

    return UsageContext(name)


def default_max_num_seqs(engine_args: t.Mapping[str, t.Any], context: UsageName) -> int | None:
    """The max_num_seqs vLLM gives an engine started with `engine_args` in `context` on this
    machine's platform; an explicit `max_num_seqs` wins. None when vLLM cannot be imported.

    Follows `EngineArgs._set_default_max_num_seqs_and_batched_tokens_args` up to the model's
    own length (which needs the model's config): the figure is the engine's, or, for a model
    shorter than the default batched tokens without chunked prefill, at most it.
    """
    explicit = engine_args.get("max_num_seqs")
    if explicit is not None:
        return int(explicit)
    world = int(engine_args.get("tensor_parallel_size") or 1) * int(
        engine_args.get("pipeline_parallel_size") or 1
    )
    table = batch_defaults(world)
    if table is None:
        return None
    seqs, tokens_default = table[context]
    tokens = engine_args.get("max_num_batched_tokens")
    throughput = engine_args.get("performance_mode") == "throughput"
    if tokens is None:
        tokens = tokens_default * (2 if throughput else 1)
    seqs *= 2 if throughput else 1
    return int(min(seqs, tokens))


Table = dict[str, tuple[int, int]]
"""(max_num_seqs, max_num_batched_tokens) by usage context name."""
LOOKUP_TIMEOUT_S = 300.0
"""Longest wait for the child process that reads vLLM's table."""


@functools.cache
def batch_defaults(world_size: int) -> Table | None:
    """vLLM's default table on this machine's platform for an engine over `world_size`
    devices; None when vLLM cannot be imported (or its table not read in time).

    A process that has not imported vLLM (a batch driver, `rig-ray serve`'s own process)
    reads it in a short-lived child process, so that it never holds vLLM, torch and
    transformers (about 450 MiB) for one table lookup."""
    if "vllm" in sys.modules:
        return _read_table(world_size)
    try:
        done = subprocess.run(
            [sys.executable, "-m", __name__, str(world_size)],
            capture_output=True,
            text=True,
            timeout=LOOKUP_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return None if answer is None else {k: (int(v[0]), int(v[1])) for k, v in answer.items()}


def _read_table(world_size: int) -> Table | None:
    try:
        from vllm.config import SchedulerConfig
        from vllm.engine.arg_utils import EngineArgs
    except ImportError:
        return None
    tokens_table, seqs_table = EngineArgs.get_batch_defaults(world_size)
    table: Table = {}
    for name in t.get_args(UsageName):
        key = usage_context(name)
        table[name] = (
            seqs_table.get(key, SchedulerConfig.DEFAULT_MAX_NUM_SEQS),
            tokens_table.get(key, SchedulerConfig.DEFAULT_MAX_NUM_BATCHED_TOKENS),
        )
    return table


def max_num_seqs_for(generator: Generator, context: UsageName = OFFLINE) -> int | None:
    """The max_num_seqs a generator's vLLM engine gets in `context`, without loading it; None
    for generators that are not vLLM's (or where vLLM is not installed)."""
    from rig_ray.generator.vllm_ import VLLMGenerator

    if not isinstance(generator, VLLMGenerator):
        return None
    args = {"tensor_parallel_size": generator.tensor_parallel_size, **generator.engine_args}
    return default_max_num_seqs(args, context)


def in_flight(max_num_seqs: int) -> int:
    """Requests to keep in flight for an engine that runs `max_num_seqs` at once."""
    return math.ceil(max_num_seqs * IN_FLIGHT_FACTOR)


if __name__ == "__main__":  # the child process of `batch_defaults`
    print(json.dumps(_read_table(int(sys.argv[1]))), flush=True)


__all__: t.Sequence[str] = [
    "IN_FLIGHT_FACTOR",
    "OFFLINE",
    "SERVER",
    "batch_defaults",
    "default_max_num_seqs",
    "in_flight",
    "max_num_seqs_for",
    "usage_context",
]
