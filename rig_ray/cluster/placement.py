"""The one placement rule for a generator's GPUs: `rr.remote()`, batch actors and Serve
replicas all ask `place()` where an engine runs.

An engine uses `tensor_parallel_size x pipeline_parallel_size` GPUs, read from the
generator's fields and its `engine_args` (engine_args win, as they do in the engine). An
actor's engine is one copy of the model: `data_parallel_size` above 1 is refused in favour of
replicas, each with GPUs of its own.

- One GPU or none: the actor itself takes `num_gpus`. Left unset, an engine that runs on a
  GPU wherever it finds one (vLLM's, transformers' with no device) takes one where the
  running Ray cluster has GPUs, and none elsewhere (the engine runs on CPU); give 0 to keep
  it off the GPUs, or a share of one to share a GPU.
- More than one: a placement group of one `{"GPU": 1}` bundle per GPU, packed on one node
  (STRICT_PACK); the actor takes its CPUs from the first bundle and no GPU of its own, and the
  engine's workers (vLLM's Ray executor) take the bundles, as Ray Data LLM places them.

An explicit `num_gpus` that disagrees with the engine is a `PlacementError` before anything
starts. The groups themselves are made in `placement_groups`.
"""

from __future__ import annotations

import math
import typing as t

from pydantic import BaseModel, ConfigDict

from rig_ray.errors import PlacementError

PARALLEL_FIELDS = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")
"""The settings whose product is the number of GPUs one engine uses."""
STRATEGY = "STRICT_PACK"
"""All bundles of one engine on one node."""

PLACE_OPTIONS = ("num_gpus", "num_cpus", "resources", "accelerator_type")
"""The actor options that `place()` takes; the others pass through as they are."""

Bundle = dict[str, float]


def check_resource(name: str, value: t.Any) -> None:
    """Refuse a count of CPUs or GPUs (`num_cpus`, `num_gpus`, a batch job's `data_cpus`)
    that is not a finite number of at least 0, with a `PlacementError` naming it: Ray
    refuses one only once an actor or a deployment starts, with a traceback of its own."""
    if value is None:
        return
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0:
        raise PlacementError(f"{name} must be a number of at least 0, not {value!r}")


def parallel_sizes(generator: t.Any) -> dict[str, int]:
    """The generator's parallel sizes (1 when it has none): its fields, then `engine_args`."""
    engine_args = getattr(generator, "engine_args", None) or {}
    sizes: dict[str, int] = {}
    for name in PARALLEL_FIELDS:
        value = engine_args.get(name, getattr(generator, name, None))
        try:
            size = int(value) if value is not None else 1
        except (TypeError, ValueError):
            raise PlacementError(f"{name} must be a whole number, got {value!r}") from None
        if size < 1:
            raise PlacementError(f"{name} must be at least 1, got {size}")
        sizes[name] = size
    return sizes


def gpus_per_engine(generator: t.Any) -> int:
    """GPUs this generator's engines use: tensor x pipeline (x data, which `place` refuses)
    parallel size."""
    return math.prod(parallel_sizes(generator).values())


class Placement(BaseModel):
    """Where one generator actor (or Serve replica) runs, and what it reserves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_cpus: float
    num_gpus: float
    """GPUs of the actor itself (0 when the engine's GPUs are bundles)."""
    resources: dict[str, float] | None = None
    accelerator_type: str | None = None
    bundles: tuple[Bundle, ...] | None = None
    """One bundle per GPU of the engine, packed on one node; None: no placement group."""

    @property
    def total_gpus(self) -> float:
        """GPUs the actor and its engine reserve together."""
        if self.bundles is None:
            return self.num_gpus
        return sum(bundle.get("GPU", 0.0) for bundle in self.bundles)

    def ray_options(self) -> dict[str, t.Any]:
        """The actor's own resource options (`.options()`, `ray_actor_options`)."""
        options: dict[str, t.Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.resources and self.bundles is None:
            options["resources"] = dict(self.resources)
        if self.accelerator_type and self.bundles is None:
            options["accelerator_type"] = self.accelerator_type
        return options

    def group_bundles(self) -> list[Bundle] | None:
        """Fresh copies of the bundles (Ray and Serve keep what they are given)."""
        return None if self.bundles is None else [dict(bundle) for bundle in self.bundles]


def place(
    generator: t.Any,
    *,
    num_gpus: float | None = None,
    num_cpus: float = 1,
    resources: dict[str, float] | None = None,
    accelerator_type: str | None = None,
) -> Placement:
    """Where an actor owning `generator` runs; `num_gpus=None` leaves it to the engine."""
    sizes = parallel_sizes(generator)
    need = math.prod(sizes.values())
    copies = sizes["data_parallel_size"]
    if copies > 1:
        raise PlacementError(
            f"data_parallel_size={copies}: an engine in a Ray actor runs one copy of the model, "
            "as vLLM's own data parallelism would start its copies on GPUs that the actor's "
            f"placement group does not hold; ask for {copies} replicas instead (`replicas` in "
            "a batch job, `num_replicas` / `--replicas` in Serve, or an LLMPool), each with "
            "GPUs of its own",
            need=need,
        )
    check_resource("num_cpus", num_cpus)
    check_resource("num_gpus", num_gpus)
    if need == 1:
        if num_gpus is not None and num_gpus > 1:
            _refuse_several_for_one(generator, num_gpus)
        if num_gpus is None:
            num_gpus = 1.0 if _uses_the_clusters_gpus(generator) else 0.0
        return Placement(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            resources=resources,
            accelerator_type=accelerator_type,
        )
    if num_gpus is not None and num_gpus != need:
        raise PlacementError(
            f"num_gpus={num_gpus:g}, but the engine runs on {need} GPUs ({_sizes(generator)}); "
            f"leave num_gpus unset (each engine then gets {need} GPUs on one node) or give "
            f"num_gpus={need}",
            need=need,
            num_gpus=num_gpus,
        )
    first: Bundle = {"GPU": 1.0, "CPU": float(num_cpus), **(resources or {})}
    bundles = [first] + [{"GPU": 1.0} for _ in range(need - 1)]
    if accelerator_type:
        for bundle in bundles:
            bundle[f"accelerator_type:{accelerator_type}"] = 0.001
    return Placement(
        num_cpus=num_cpus,
        num_gpus=0,
        resources=resources,
        accelerator_type=accelerator_type,
        bundles=tuple(bundles),
    )


def _refuse_several_for_one(generator: t.Any, num_gpus: float) -> None:
    """A PlacementError for `num_gpus` > 1 on an engine of one GPU, unless the engine spreads
    itself over the GPUs it is given (transformers' `device_map`), in whole GPUs: its actor
    then holds them all."""
    if not getattr(generator, "spreads_over_its_gpus", lambda: False)():
        raise PlacementError(
            f"num_gpus={num_gpus:g}, but the engine uses one GPU ({_sizes(generator)}): "
            "the others would be reserved and never used; set tensor_parallel_size (or "
            "pipeline_parallel_size; for transformers, device_map='auto') to spread the "
            "model over them, or leave num_gpus at 1",
            need=1,
            num_gpus=num_gpus,
        )
    if num_gpus != int(num_gpus):
        raise PlacementError(
            f"num_gpus={num_gpus:g}: more than one GPU is asked for in whole GPUs",
            need=1,
            num_gpus=num_gpus,
        )


def _uses_the_clusters_gpus(generator: t.Any) -> bool:
    """Whether an engine of one GPU would find one: it runs on a GPU wherever it finds one,
    and the running Ray cluster has GPUs. Without that GPU reserved, vLLM (or torch) takes
    the node's first GPU anyway, beside whatever Ray placed there."""
    takes = getattr(generator, "takes_a_gpu_where_there_is_one", None)
    if takes is None or not takes():
        return False
    return cluster_gpus() > 0


def cluster_gpus() -> float:
    """GPUs of the running Ray cluster; where Ray does not run in this process yet, those of
    this machine, which a local Ray started here will count (an app built before
    `serve.run` starts Ray must still reserve them)."""
    from rig_ray.generator.vllm_sizing import ray_running

    if not ray_running():
        return float(machine_gpus())
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


NVIDIA_GPUS = "/proc/driver/nvidia/gpus"
"""One entry per GPU that NVIDIA's driver runs on this machine (Linux)."""


def machine_gpus() -> int:
    """NVIDIA GPUs of this machine, as its driver lists them (no torch, no NVML), limited to
    `CUDA_VISIBLE_DEVICES` where that is set."""
    import os

    try:
        found = len(os.listdir(NVIDIA_GPUS))
    except OSError:
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return found
    return min(found, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))


VLLM_MEMORY_SHARE = 0.9
"""vLLM's own `gpu_memory_utilization` default: the share of a whole GPU an engine takes."""


def placed_engine_args(engine_args: dict[str, t.Any], on_cpu: bool) -> dict[str, t.Any]:
    """A vLLM engine's arguments, fitted to where Ray put the actor that starts it:
    - over several GPUs from an actor in a placement group, vLLM's Ray executor, which takes
      the group's bundles (as Ray Data LLM asks). Left to guess, vLLM first counts the GPUs
      this process sees, which a Ray that hides them from the actor leaves at none;
    - on a share of one GPU (`num_gpus=0.5`), that share of vLLM's memory default (0.45 of
      the GPU), so that the engines sharing it all start: each would otherwise ask for 0.9.
    Explicit `distributed_executor_backend` and `gpu_memory_utilization` win."""
    from rig_ray.generator.vllm_sizing import engine_world

    fitted = dict(engine_args)
    if (
        engine_world(engine_args) > 1
        and "distributed_executor_backend" not in fitted
        and _in_a_group()
    ):
        fitted["distributed_executor_backend"] = "ray"
    share = None if on_cpu or fitted.get("gpu_memory_utilization") else _gpu_share()
    if share is not None:
        fitted["gpu_memory_utilization"] = round(VLLM_MEMORY_SHARE * share, 4)
    return fitted


def _gpu_share() -> float | None:
    """The share of one GPU this Ray actor or task holds, where it holds less than a whole
    one (None in a driver, which holds none)."""
    from rig_ray.generator.vllm_sizing import ray_running

    if not ray_running():
        return None
    import ray

    try:
        held = float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    except AssertionError:  # Ray's answer in a driver: only workers are assigned resources
        return None
    return held if 0 < held < 1 else None


def _in_a_group() -> bool:
    """Whether this process is a Ray actor or task in a placement group."""
    from rig_ray.generator.vllm_sizing import ray_running

    if not ray_running():
        return False
    import ray

    return ray.util.get_current_placement_group() is not None


def _sizes(generator: t.Any) -> str:
    sizes = parallel_sizes(generator)
    return " x ".join(f"{name}={size}" for name, size in sizes.items())


def refuse_what_no_node_holds(placement: Placement) -> None:
    """On a cluster that cannot grow (a local Ray this process started), a PlacementError for
    an engine whose GPUs no live node has, all on one node (with its accelerator type and
    custom resources): Ray would keep its actor waiting for them forever. A cluster that can
    grow may still add such a node, so there it waits."""
    if placement.total_gpus <= 0:
        return
    from rig_ray.batch.placement import fixed_cluster
    from rig_ray.generator.vllm_node_sizing import engine_nodes

    if not fixed_cluster() or engine_nodes(placement):
        return
    import ray

    most = max((float(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n["Alive"]), default=0)
    raise PlacementError(
        f"the engine needs {placement.total_gpus:g} GPU(s) on one node"
        + (f" ({placement.accelerator_type})" if placement.accelerator_type else "")
        + f", but no node of this Ray has them (the most on one node: {most:g}); lower "
        "tensor_parallel_size / pipeline_parallel_size or num_gpus, or join a cluster that has "
        "them",
        need=math.ceil(placement.total_gpus),
    )


def refuse_what_the_cluster_cannot_hold(
    wanted: t.Sequence[tuple[Placement, int]], what: str, hint: str = ""
) -> None:
    """On a cluster that cannot grow, a PlacementError where `wanted` (placements, and how
    many actors of each start at once) needs more GPUs than the cluster has, or an engine
    more than any one node has (`refuse_what_no_node_holds`): Ray would leave the last of
    them waiting forever. `what` names them in the message ("the stage 'judge'"); `hint`
    ends it."""
    for placement, _ in wanted:
        refuse_what_no_node_holds(placement)
    need = sum(placement.total_gpus * count for placement, count in wanted)
    if need <= 0:
        return
    from rig_ray.batch.placement import fixed_cluster

    if not fixed_cluster():
        return
    import ray

    have = float(ray.cluster_resources().get("GPU", 0))
    if need > have + 1e-9:
        raise PlacementError(
            f"{what} needs {need:g} GPU(s) at once for its engines, but this Ray has {have:g}; "
            "ask for fewer replicas, or smaller engines, or join a cluster that has them" + hint,
            need=math.ceil(need),
        )


__all__: t.Sequence[str] = [
    "PARALLEL_FIELDS",
    "PLACE_OPTIONS",
    "STRATEGY",
    "Placement",
    "check_resource",
    "gpus_per_engine",
    "parallel_sizes",
    "place",
]
