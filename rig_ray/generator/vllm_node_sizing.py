"""vLLM's default table read on the nodes of a Ray cluster where an engine that takes GPUs
may run (see `vllm_sizing.engine_table`): in a task pinned to such a node that reserves
nothing, one node of each kind of accelerator; where none has what the engine takes, or none
answers, the driver's own table is used, with one warning saying why."""

from __future__ import annotations

import os
import threading
import typing as t

from rig_ray.generator import vllm_sizing
from rig_ray.generator.vllm_sizing import Table, _lookups, _read_table, logger
from rig_ray.redaction import error_text

if t.TYPE_CHECKING:
    from rig_ray.cluster.placement import Placement

_told: set[tuple[str, str]] = set()
"""Fallbacks already warned of, by the engine's wants and the reason."""
_told_lock = threading.Lock()

READ_ON_NODE_TIMEOUT_S = 180.0
"""Longest wait for the task that reads vLLM's table on a node with the engine's GPUs."""


def engine_nodes(placement: Placement) -> list[str]:
    """Ids of the live nodes that have what one engine of `placement` takes: its GPUs (all of
    them on one node), its accelerator type and its custom resources (totals, not what is
    free now: the figures depend on the kind of node, not on its load)."""
    import ray

    gpus = placement.total_gpus
    needs = dict(placement.resources or {})
    if placement.accelerator_type:
        needs[f"accelerator_type:{placement.accelerator_type}"] = 0.001
    nodes = []
    for node in ray.nodes():
        have = node.get("Resources") or {}
        if not node.get("Alive") or have.get("GPU", 0.0) < gpus:
            continue
        if all(have.get(name, 0.0) >= amount for name, amount in needs.items()):
            nodes.append(str(node["NodeID"]))
    return nodes


def _read_on_node(world_size: int, node: str) -> Table | None:
    return t.cast(
        Table | None,
        _lookups(("node", world_size, node), lambda: _read_on_node_now(world_size, node)),
    )


def _read_on_node_now(world_size: int, node: str) -> Table | None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, num_gpus=0, max_calls=1)(_read_with_a_gpu_in_view)
    strategy = NodeAffinitySchedulingStrategy(node, soft=False)
    ref = task.options(scheduling_strategy=strategy).remote(world_size)
    try:
        return t.cast(Table | None, ray.get(ref, timeout=READ_ON_NODE_TIMEOUT_S))
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise TimeoutError(f"no answer in {READ_ON_NODE_TIMEOUT_S:g} s") from None


def read_on_engine_node(world_size: int, placement: Placement) -> tuple[Table | None, str | None]:
    """vLLM's table read where `placement` may run its engine, and the id of the first node
    it was read on; this machine's table and None where no node has what it takes or none
    answers. On a cluster with several kinds of GPU node that all fit (A100 and H100 nodes,
    with no `accelerator_type` asked for), it is read on one node of each kind and the
    largest figures kept: an engine that can run more is never kept short, and one that
    runs fewer only has more requests waiting in its queue."""
    nodes = one_node_per_kind(engine_nodes(placement))
    why = "no live node of the cluster has them"
    tables: list[Table] = []
    read_on: str | None = None
    for node in nodes:
        try:
            table = _read_on_node(world_size, node)
        except Exception as error:  # the task failed or timed out: sized from here instead
            why = f"reading them on node {node} failed ({error_text(error)[:300]})"
            continue
        if table is not None:
            tables.append(table)
            read_on = read_on or node
    if tables:
        return _largest(tables), read_on
    if nodes and why.startswith("no live node"):
        why = "vLLM could not be imported on the nodes that have them"
    local = vllm_sizing.batch_defaults(world_size)
    with _told_lock:  # once per engine and reason (a lookup made ahead asks too)
        told = (_wants(placement), why) in _told
        _told.add((_wants(placement), why))
    if told:
        return local, None
    logger.warning(
        "vLLM's default batch sizes for an engine on %s were not read where it will run: %s; "
        "this machine's are used (%s), which may keep fewer requests in flight than its "
        "engine runs; set max_num_seqs in engine_args to size it yourself",
        _wants(placement),
        why,
        "none: vLLM is not installed here" if local is None else _figures(local),
    )
    return local, None


def one_node_per_kind(nodes: list[str]) -> list[str]:
    """The first of `nodes` (ids) of each kind of accelerator (Ray's `accelerator_type:*`
    resources: nodes without one are one kind)."""
    import ray

    kinds: dict[str, tuple[str, ...]] = {}
    for node in ray.nodes():
        have = node.get("Resources") or {}
        kinds[str(node["NodeID"])] = tuple(
            sorted(k for k in have if k.startswith("accelerator_type:"))
        )
    chosen: dict[tuple[str, ...], str] = {}
    for node_id in nodes:
        chosen.setdefault(kinds.get(node_id, ()), node_id)
    return list(chosen.values())


def _largest(tables: list[Table]) -> Table:
    """Each context's largest figures over the tables."""
    return {
        name: (max(t_[name][0] for t_ in tables), max(t_[name][1] for t_ in tables))
        for name in tables[0]
    }


def _wants(placement: Placement) -> str:
    parts = [f"{placement.total_gpus:g} GPU"]
    if placement.accelerator_type:
        parts.append(placement.accelerator_type)
    parts.extend(f"{name}={amount:g}" for name, amount in (placement.resources or {}).items())
    return ", ".join(parts)


def _figures(table: Table) -> str:
    return "; ".join(f"{name}: {seqs} sequences" for name, (seqs, _tokens) in table.items())


def _read_with_a_gpu_in_view(world_size: int) -> Table | None:
    """The task of `_read_on_node`. It takes no GPU, so that it never waits for one; where
    Ray hides the GPUs from such a task (`RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO`), the first
    is put back in view: the table needs only its name and memory (read through NVML)."""
    for variable in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"):
        if os.environ.get(variable) == "":
            os.environ[variable] = "0"
    return _read_table(world_size)


__all__: t.Sequence[str] = [
    "READ_ON_NODE_TIMEOUT_S",
    "engine_nodes",
    "one_node_per_kind",
    "read_on_engine_node",
]
