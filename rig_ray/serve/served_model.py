"""`ServedModel`: one generator behind the endpoint and how its deployment runs (replicas,
autoscaling, batching, health probes, placement), with the names it is served under."""

from __future__ import annotations

import re
import sys
import typing as t
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rig_ray.cluster.placement import check_resource
from rig_ray.errors import InvalidGeneratorError
from rig_ray.generator.base import Generator
from rig_ray.generator.local import LocalGenerator
from rig_ray.generator.registry import get_generator

if t.TYPE_CHECKING:
    from rig_ray.cluster.placement import Placement

DEFAULT_SHUTDOWN_S = 120.0
"""How long a stopping replica has to drain and unload, unless its model says otherwise."""
AUTOSCALING_TARGET_SHARE = 0.75
"""Autoscaling's `target_ongoing_requests`, unless given: this share of what a replica takes
at once. Serve's own default (2) would add replicas while an engine that batches hundreds of
requests at once stands nearly idle."""
DEFAULT_MAX_ONGOING_REQUESTS = 64
"""Requests a replica takes at once, unless its engine runs more (see ServedModel)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def short_name(generator: Generator) -> str:
    """The name a generator is served under by default: the last part of its model path."""
    return PurePosixPath(generator.model.rstrip("/")).name or generator.model


def deployment_name(model_name: str) -> str:
    """The Serve deployment of a served model: its name with characters outside letters,
    digits, `_`, `.` and `-` replaced by `_` (`serve.get_deployment_handle` takes it)."""
    return _UNSAFE.sub("_", model_name)


def to_generator(value: Generator | str) -> Generator:
    from rig_ray.cluster.remote_generator import RemoteGenerator

    if isinstance(value, RemoteGenerator):
        raise InvalidGeneratorError(
            "this generator already runs in an actor; pass its config (or identifier) instead"
        )
    if isinstance(value, Generator):
        return value
    if isinstance(value, str):
        return get_generator(value)
    raise InvalidGeneratorError(
        f"expected a Generator or an identifier string, not {type(value).__name__}"
    )


class ServedModel(BaseModel):
    """One generator behind the endpoint and how its deployment runs.

    Only the generator's config travels: each replica builds and loads its own engine.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    generator: Generator
    """The generator (an identifier string is turned into one)."""
    name: str | None = Field(None, min_length=1)
    """The model name clients send; unset: the last part of the generator's model path."""
    num_replicas: int | None = Field(None, ge=1)
    """Fixed number of replicas (unset: 1, or autoscaling when `autoscaling_config` is set)."""
    autoscaling_config: dict[str, t.Any] | None = None
    """Serve autoscaling (min_replicas, max_replicas, target_ongoing_requests, ...); unset,
    `target_ongoing_requests` is 0.75 of `max_ongoing_requests`."""
    ray_actor_options: dict[str, t.Any] = Field(default_factory=lambda: {"num_cpus": 1})
    """Resources of each replica: num_cpus, num_gpus, accelerator_type, resources, ..."""
    max_ongoing_requests: int | None = Field(None, ge=1)
    """Requests a replica takes at once; keep it >= max_batch_size so batches can fill. Unset:
    64, or for a vLLM engine about 1.1 x the max_num_seqs vLLM's defaults give it in a server
    (`ongoing_requests()`), so that the engine's continuous batching can fill."""
    max_queued_requests: int = Field(256, ge=-1)
    """Requests waiting for a replica before new ones get 503/429 (-1: no limit)."""
    max_batch_size: int = Field(32, ge=1)
    """Most items (requests x n) in one generate call; 1 turns batching off."""
    batch_wait_timeout_s: float = Field(0.05, ge=0)
    """Longest wait for more requests once the first of a batch arrived (requests that arrive
    while the engine is busy join its next call in any case)."""
    max_concurrent_batches: int = Field(1, ge=1)
    """Generate calls a replica runs at once (raise it for remote APIs, not local engines)."""
    overload_status: t.Literal[429, 503] = 503
    """The status of a request turned away because the queue is full."""
    retry_after_s: float = Field(1.0, ge=0)
    """The Retry-After of that reply, in seconds."""
    max_tokens_limit: int | None = Field(4096, ge=1)
    """Most tokens a request may ask for (None: no limit)."""
    health_probe: bool | None = None
    """Whether the health check runs a tiny generation (see health_probe_interval_s); unset:
    for engines in the replica (transformers, vLLM), not for remote APIs."""
    health_probe_interval_s: float = Field(30.0, gt=0)
    """Least seconds between two probe generations (none while requests keep finishing)."""
    health_probe_timeout_s: float = Field(300.0, gt=0)
    """Seconds a probe may wait, with no request finishing meanwhile, before the replica
    counts as hung and Serve replaces it; keep it above the longest generate call."""
    health_check_period_s: float = Field(10.0, gt=0)
    """Seconds between Serve's health checks of a replica."""
    graceful_shutdown_timeout_s: float = Field(DEFAULT_SHUTDOWN_S, gt=0)
    """Seconds a stopping replica has to finish its running requests and unload its engine
    (its processes gone, their GPUs free) before Serve kills it. Serve's own default, 20 s,
    can cut an engine's unload short, and the next replica on that GPU then finds its
    memory still in use."""

    @field_validator("generator", mode="before")
    @classmethod
    def _build_generator(cls, value: t.Any) -> t.Any:
        return to_generator(value) if isinstance(value, str) else value

    @field_validator("generator")
    @classmethod
    def _not_remote(cls, value: Generator) -> Generator:
        return to_generator(value)

    @field_validator("ray_actor_options")
    @classmethod
    def _counts_of_resources(cls, value: dict[str, t.Any]) -> dict[str, t.Any]:
        for key in ("num_cpus", "num_gpus"):
            check_resource(key, value.get(key))
        return value

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> t.Self:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("give num_replicas or autoscaling_config, not both")
        return self

    @property
    def served_name(self) -> str:
        return self.name or short_name(self.generator)

    def deployment_options(self) -> dict[str, t.Any]:
        """Keyword arguments of the deployment's `.options()`."""
        options: dict[str, t.Any] = {
            "name": deployment_name(self.served_name),
            **self.placement_options(),
            "max_ongoing_requests": self.ongoing_requests(),
            "max_queued_requests": self.max_queued_requests,
            "backpressure_config": {
                "status_code": self.overload_status,
                "retry_after_s": self.retry_after_s,
            },
            "user_config": {
                "max_batch_size": self.max_batch_size,
                "batch_wait_timeout_s": self.batch_wait_timeout_s,
            },
            "health_check_period_s": self.health_check_period_s,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
        }
        if self.autoscaling_config is not None:
            scaling = dict(self.autoscaling_config)
            target = max(1, round(AUTOSCALING_TARGET_SHARE * options["max_ongoing_requests"]))
            scaling.setdefault("target_ongoing_requests", target)
            options["autoscaling_config"] = scaling
        else:
            options["num_replicas"] = self.num_replicas or 1
        return options

    def ongoing_requests(self) -> int:
        """max_ongoing_requests, or its default: at least the engine's max_num_seqs for a
        generator that batches continuously on vLLM (from vLLM's own table for this machine,
        in the server context; no engine is loaded)."""
        if self.max_ongoing_requests is not None:
            return self.max_ongoing_requests
        if not (self.generator.batches_continuously and takes_vllm_fields(self.generator)):
            return DEFAULT_MAX_ONGOING_REQUESTS
        from rig_ray.generator import vllm_sizing

        seqs = vllm_sizing.max_num_seqs_for(self.generator, vllm_sizing.SERVER, self.placement())
        if seqs is None:
            return DEFAULT_MAX_ONGOING_REQUESTS
        return max(DEFAULT_MAX_ONGOING_REQUESTS, vllm_sizing.in_flight(seqs))

    def most_replicas(self) -> int:
        """The most replicas the model's deployment runs: `num_replicas`, or its autoscaling
        maximum."""
        if self.autoscaling_config is not None:
            return int(self.autoscaling_config.get("max_replicas", 1))
        return self.num_replicas or 1

    def first_replicas(self) -> int:
        """The replicas the model's deployment starts with: `num_replicas`, or its
        autoscaling `initial_replicas` (else `min_replicas`, at least 1)."""
        if self.autoscaling_config is not None:
            config = self.autoscaling_config
            return max(1, int(config.get("initial_replicas") or config.get("min_replicas") or 1))
        return self.num_replicas or 1

    def placement_options(self) -> dict[str, t.Any]:
        """`ray_actor_options`, and the bundles of an engine over several GPUs, by the
        placement rule of `rig_ray.cluster.placement` (a num_gpus that disagrees with the
        engine is a PlacementError)."""
        from rig_ray.cluster.placement import PLACE_OPTIONS
        from rig_ray.cluster.placement_groups import serve_options

        options = serve_options(self.placement())
        others = {k: v for k, v in self.ray_actor_options.items() if k not in PLACE_OPTIONS}
        options["ray_actor_options"].update(others)  # runtime_env, memory, ...
        bundles = options.get("placement_group_bundles")
        if bundles and others.get("memory"):  # the replica runs in the first bundle
            bundles[0]["memory"] = float(others["memory"])
        return options

    def placement(self) -> Placement:
        """Where each replica runs and what it reserves (`rig_ray.cluster.placement.place`)."""
        from rig_ray.cluster.placement import place

        actor = self.ray_actor_options
        return place(
            self.generator,
            num_gpus=actor.get("num_gpus"),
            num_cpus=actor.get("num_cpus", 1),
            resources=actor.get("resources"),
            accelerator_type=actor.get("accelerator_type"),
        )

    def replica_options(self) -> t.Any:
        """How its replicas drive the generator (a deployment.ReplicaOptions)."""
        from rig_ray.serve.deployment import ReplicaOptions

        probe = self.health_probe
        return ReplicaOptions(
            max_concurrent_batches=self.max_concurrent_batches,
            health_probe=isinstance(self.generator, LocalGenerator) if probe is None else probe,
            health_probe_interval_s=self.health_probe_interval_s,
            health_probe_timeout_s=self.health_probe_timeout_s,
        )


def takes_vllm_fields(generator: Generator) -> bool:
    """Whether `generator` runs on vLLM (its module is loaded if it does)."""
    module = sys.modules.get("rig_ray.generator.vllm_")
    return module is not None and isinstance(generator, module.VLLMGenerator)
