"""How vLLM sizes an engine for a job, read from vLLM's own default table without loading one.

vLLM picks `max_num_seqs` and `max_num_batched_tokens` by the engine's usage context and the
platform it runs on (`EngineArgs.get_batch_defaults`): `vllm.LLM` starts with `LLM_CLASS`,
`vllm serve` with `OPENAI_API_SERVER`. rig_ray starts generators, batch jobs and `remote()`
actors as `LLM_CLASS` and Serve replicas as `OPENAI_API_SERVER`, so its engines get the same
sizes as vLLM's own entry points. The table is read only when a figure is asked for, and in a
child process where this one has not imported vLLM (see `batch_defaults`).

vLLM's table depends on the device of the process that reads it (an H100 or H200 gets 4x a
CPU's or an A100's sequences). An engine that takes GPUs on a Ray cluster may run on another
kind of node than the driver (a CPU head node, a laptop joined with `--address`), so its
figures are read on a node that has its GPUs (`engine_table`, `vllm_node_sizing`), in a task
that reserves none.

Either read imports vLLM (seconds), so each is made once per process, and a job can start it
in the background (`prefetch`) while it starts Ray and reads its input.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import json
import logging
import math
import subprocess
import sys
import threading
import typing as t

if t.TYPE_CHECKING:
    from rig_ray.cluster.placement import Placement
    from rig_ray.generator.base import Generator

logger = logging.getLogger("rig_ray.vllm")

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


def default_max_num_seqs(
    engine_args: t.Mapping[str, t.Any],
    context: UsageName,
    placement: Placement | None = None,
) -> int | None:
    """The max_num_seqs vLLM gives an engine started with `engine_args` in `context`, on the
    platform of a node where `placement` runs it (this machine's where it takes no GPU, see
    `engine_table`); an explicit `max_num_seqs` wins. None when vLLM cannot be imported.

    Follows `EngineArgs._set_default_max_num_seqs_and_batched_tokens_args` up to the model's
    own length (which needs the model's config): the figure is the engine's, or, for a model
    shorter than the default batched tokens without chunked prefill, at most it.
    """
    explicit = engine_args.get("max_num_seqs")
    if explicit is not None:
        return int(explicit)
    table = engine_table(engine_world(engine_args), placement)
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


def engine_world(engine_args: t.Mapping[str, t.Any]) -> int:
    """Devices one engine runs over (tensor x pipeline parallel)."""
    return int(engine_args.get("tensor_parallel_size") or 1) * int(
        engine_args.get("pipeline_parallel_size") or 1
    )


class _Once:
    """Each key's lookup made once per process: a caller that comes while it runs waits for
    its answer, and later callers get the same answer, a failure too (a read on a node that
    timed out is not waited for twice: the sizing falls back to this machine's table)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[tuple[t.Any, ...], concurrent.futures.Future[t.Any]] = {}

    def __call__(self, key: tuple[t.Any, ...], lookup: t.Callable[[], t.Any]) -> t.Any:
        with self._lock:
            future = self._calls.get(key)
            mine = future is None
            if future is None:
                future = self._calls[key] = concurrent.futures.Future()
        if mine:
            try:
                future.set_result(lookup())
            except Exception as error:
                future.set_exception(error)
            except BaseException as error:  # an interrupt is no answer: a later call tries again
                with self._lock:
                    del self._calls[key]
                future.set_exception(error)
                raise
        return future.result()

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()


_lookups = _Once()


def batch_defaults(world_size: int) -> Table | None:
    """vLLM's default table on this machine's platform for an engine over `world_size`
    devices; None when vLLM cannot be imported (or its table not read in time).

    A process that has not imported vLLM (a batch driver, `rig-ray serve`'s own process)
    reads it in a short-lived child process, so that it never holds vLLM, torch and
    transformers (about 450 MiB) for one table lookup."""
    return t.cast(Table | None, _lookups(("here", world_size), lambda: _read_here(world_size)))


def _read_here(world_size: int) -> Table | None:
    if "vllm" in sys.modules:
        return _read_table(world_size)
    child = subprocess.Popen(
        [sys.executable, "-m", __name__, str(world_size)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with _children_lock:
        _children.add(child)
    try:
        out, _ = child.communicate(timeout=LOOKUP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return None
    finally:
        with _children_lock:
            _children.discard(child)
    if child.returncode != 0:
        return None
    answer = json.loads(out.strip().splitlines()[-1])
    return None if answer is None else {k: (int(v[0]), int(v[1])) for k, v in answer.items()}


_children: set[subprocess.Popen[str]] = set()
_children_lock = threading.Lock()


@atexit.register
def _end_children() -> None:
    """A lookup still running when this process ends (one started ahead for a job that then
    had nothing to do) ends with it."""
    with _children_lock:
        for child in _children:
            child.kill()


def prefetch(generators: t.Sequence[Generator], placements: t.Sequence[Placement | None]) -> None:
    """Start, in the background, the lookups that sizing these generators' vLLM engines
    where `placements` run them will make (`max_num_seqs_for`), so that the sizing finds them
    made. An engine that takes GPUs is looked up only once Ray runs (it is read on a node
    with its GPUs, see `engine_table`); a call before that leaves it alone."""
    from rig_ray.generator.vllm_ import VLLMGenerator

    for generator, placement in zip(generators, placements, strict=True):
        if not isinstance(generator, VLLMGenerator):
            continue
        args = {"tensor_parallel_size": generator.tensor_parallel_size, **generator.engine_args}
        if args.get("max_num_seqs") is not None:
            continue
        if placement is not None and placement.total_gpus > 0 and not ray_running():
            continue
        threading.Thread(
            target=_look_up_quietly,
            args=(engine_world(args), placement),
            name="rig_ray-vllm-sizes",
            daemon=True,
        ).start()


def _look_up_quietly(world_size: int, placement: Placement | None) -> None:
    """A lookup made ahead: its failure is the caller's to meet when it asks."""
    try:
        engine_table(world_size, placement)
    except Exception:
        logger.debug("vLLM's table looked up ahead failed", exc_info=True)


def engine_table(world_size: int, placement: Placement | None = None) -> Table | None:
    """vLLM's table as the engine of `placement` will read it: on a node of the running Ray
    cluster that has its GPUs (and its accelerator type and custom resources) where it takes
    any, else on this machine (`batch_defaults`). Where no such node is up, or the task does
    not answer in `READ_ON_NODE_TIMEOUT_S`, this machine's table is used, with a warning."""
    if placement is None or placement.total_gpus <= 0 or not ray_running():
        return batch_defaults(world_size)
    from rig_ray.generator.vllm_node_sizing import read_on_engine_node

    table, _node = read_on_engine_node(world_size, placement)
    return table


def ray_running() -> bool:
    """Whether Ray runs in this process (never importing it to find out)."""
    if "ray" not in sys.modules:
        return False
    import ray

    return bool(ray.is_initialized())


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


def max_num_seqs_for(
    generator: Generator,
    context: UsageName = OFFLINE,
    placement: Placement | None = None,
) -> int | None:
    """The max_num_seqs a generator's vLLM engine gets in `context`, without loading it, where
    `placement` runs it (None: in this process); None for generators that are not vLLM's (or
    where vLLM is not installed)."""
    from rig_ray.generator.vllm_ import VLLMGenerator

    if not isinstance(generator, VLLMGenerator):
        return None
    args = {"tensor_parallel_size": generator.tensor_parallel_size, **generator.engine_args}
    return default_max_num_seqs(args, context, placement)


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
    "engine_table",
    "in_flight",
    "max_num_seqs_for",
    "usage_context",
]
