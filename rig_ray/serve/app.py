"""`build_app`: a Ray Serve application serving generators over OpenAI-compatible routes: one
generator's routes and engine in one deployment, several generators each in a deployment of
its own behind one ingress."""

from __future__ import annotations

import re
import sys
import typing as t
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rig_ray.cluster.placement import check_resource
from rig_ray.errors import InvalidGeneratorError, ServeConfigError
from rig_ray.generator.base import Generator
from rig_ray.generator.local import LocalGenerator
from rig_ray.generator.registry import get_generator
from rig_ray.serve.auth import auth_from
from rig_ray.serve.limits import RequestLimits

if t.TYPE_CHECKING:
    from ray.serve import Application, Deployment

    from rig_ray.cluster.placement import Placement

APP_NAME = "rig_ray"
"""The Serve application name that `rig-ray serve` and jobs/serve_config.yaml use."""
INGRESS_NAME = "OpenAIIngress"
"""The name of the ingress deployment."""
DEFAULT_REQUEST_TIMEOUT_S = 600.0
"""Seconds a request may take before it is stopped with 504."""
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


def _to_generator(value: Generator | str) -> Generator:
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
        return _to_generator(value) if isinstance(value, str) else value

    @field_validator("generator")
    @classmethod
    def _not_remote(cls, value: Generator) -> Generator:
        return _to_generator(value)

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
        from rig_ray.cluster.placement import PLACE_OPTIONS, serve_options

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


ModelLike = Generator | str | ServedModel


def served_models(
    generators: ModelLike | t.Sequence[ModelLike],
    *,
    name: str | t.Sequence[str] | None = None,
    **options: t.Any,
) -> list[ServedModel]:
    """`generators` as ServedModels: plain generators and identifiers take `options`, and
    `name` (one per generator) when given; a ServedModel keeps its own settings."""
    if isinstance(generators, t.Sequence) and not isinstance(generators, str):
        items: list[ModelLike] = list(generators)
    else:  # one generator (or something else, which _to_generator turns away)
        items = [t.cast(ModelLike, generators)]
    if not items:
        raise ServeConfigError("give at least one generator", field="generators")
    names: list[str | None] = [None] * len(items)
    if name is not None:
        names = [name] if isinstance(name, str) else list(name)
        if len(names) != len(items):
            raise ServeConfigError(
                f"got {len(names)} names for {len(items)} generators; give one each",
                field="name",
            )
    served = []
    for item, item_name in zip(items, names, strict=True):
        if isinstance(item, ServedModel):
            served.append(
                item if item_name is None else item.model_copy(update={"name": item_name})
            )
        else:
            served.append(ServedModel(generator=_to_generator(item), name=item_name, **options))
    _check_names(served)
    return served


def _check_names(served: list[ServedModel]) -> None:
    seen: dict[str, str] = {}
    for model in served:
        deployment = deployment_name(model.served_name)
        if deployment == INGRESS_NAME:
            raise ServeConfigError(f"the name {INGRESS_NAME!r} is reserved", field="name")
        if deployment in seen:
            raise ServeConfigError(
                f"two generators would be served as {model.served_name!r} (and "
                f"{seen[deployment]!r}); give each its own name=",
                field="name",
            )
        seen[deployment] = model.served_name


def build_app(
    generators: ModelLike | t.Sequence[ModelLike],
    *,
    name: str | t.Sequence[str] | None = None,
    api_key: str | None = None,
    api_key_env: str | None = None,
    limits: RequestLimits | dict[str, t.Any] | None = None,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ingress_options: dict[str, t.Any] | None = None,
    batch_storage: str | None = None,
    batch_max_in_flight: int = 4,
    batch_lease_s: float = 30.0,
    batch_window_s: float | None = None,
    one_deployment: bool | None = None,
    **options: t.Any,
) -> Application:
    """A Serve application of OpenAI-compatible routes: for one generator, one deployment
    named after it that holds the routes and the engine; for several (or with
    `one_deployment=False`, the split app), one deployment per generator behind an ingress
    deployment (`INGRESS_NAME`).

    `generators`: Generators, identifier strings or ServedModels. `options` are ServedModel
    settings (num_replicas, autoscaling_config, ray_actor_options, max_ongoing_requests,
    max_queued_requests, max_batch_size, batch_wait_timeout_s, ...) for every generator given
    without its own ServedModel.

    Auth: `api_key` (only its SHA-256 reaches the cluster), or `api_key_env`, the name of an
    environment variable read where the ingress runs (it refuses to start without it), else
    $RIG_RAY_API_KEY read here; none of them set means no auth, and an empty key is an error.
    `limits` caps what one request may send (RequestLimits); `request_timeout_s` is how long
    a request may take before it is stopped with 504. `ingress_options` go to the ingress's
    `.options()`. `/v1/files` and `/v1/batches` keep their files and jobs under
    `batch_storage` (a folder or pyarrow filesystem URI; default: under RIG_RAY_CACHE), and
    all batches together keep at most `batch_max_in_flight` requests in the model deployments
    (per ingress replica). A replica that stops for good lets another take its batches up
    after `batch_lease_s`. `batch_window_s` replaces the 24h completion window (for tests).
    `one_deployment`: None (the default) serves one generator from one deployment and several
    from the split app; True asks for one deployment (a ServeConfigError with several
    generators), False for the split app. One deployment runs with the model's options, and
    `ingress_options` on top (their `ray_actor_options` merged key by key; resources stay the
    model's, see `rig_ray.serve.single.one_deployment_options`); each streamed token then
    makes one Ray hop fewer.
    Run it with `serve.run(app, name=APP_NAME, route_prefix="/")`.
    """
    from rig_ray.cluster.options import config_payload
    from rig_ray.serve.deployment import GeneratorDeployment
    from rig_ray.serve.ingress import ModelRoute, OpenAIIngress

    if batch_max_in_flight < 1:
        raise ServeConfigError("batch_max_in_flight must be >= 1", field="batch_max_in_flight")
    if not batch_lease_s > 0:
        raise ServeConfigError("batch_lease_s must be > 0", field="batch_lease_s")
    if not request_timeout_s > 0:
        raise ServeConfigError("request_timeout_s must be > 0", field="request_timeout_s")
    auth = auth_from(api_key, api_key_env)
    request_limits = RequestLimits.model_validate(limits or {})
    served = served_models(generators, name=name, **options)
    ingress_args = (
        auth,
        request_limits,
        request_timeout_s,
        batch_storage,
        batch_max_in_flight,
        batch_lease_s,
        batch_window_s,
    )
    if one_deployment or (one_deployment is None and len(served) == 1):
        return _one_deployment(served, ingress_args, ingress_options)
    replica = t.cast("Deployment", GeneratorDeployment)  # what @serve.deployment made of it
    routes = {}
    for model in served:
        bound = replica.options(**model.deployment_options()).bind(
            config_payload(model.generator), model.served_name, model.replica_options()
        )
        routes[model.served_name] = ModelRoute(
            bound, model.max_tokens_limit, takes_vllm_fields(model.generator)
        )
    ingress: dict[str, t.Any] = {
        "name": INGRESS_NAME,
        "ray_actor_options": {"num_cpus": 0},
        "max_ongoing_requests": ingress_capacity(served),
    }
    ingress.update(ingress_options or {})
    return t.cast("Deployment", OpenAIIngress).options(**ingress).bind(routes, *ingress_args)


INGRESS_MAX_ONGOING = 1024
"""The ingress's max_ongoing_requests where its models' replicas together take fewer."""


def ingress_capacity(served: t.Sequence[ServedModel]) -> int:
    """The ingress's max_ongoing_requests: what every replica of every model it routes to
    takes at once (at the most replicas they scale to), so that one ingress replica never
    keeps the engines behind it from filling; at least `INGRESS_MAX_ONGOING`."""
    total = sum(model.ongoing_requests() * model.most_replicas() for model in served)
    return max(INGRESS_MAX_ONGOING, total)


def _one_deployment(
    served: list[ServedModel],
    ingress_args: tuple[t.Any, ...],
    ingress_options: dict[str, t.Any] | None,
) -> Application:
    """The one-deployment app: routes and generator in one deployment."""
    from rig_ray.cluster.options import config_payload
    from rig_ray.serve.single import OneModelDeployment, one_deployment_options

    if len(served) != 1:
        raise ServeConfigError(
            f"one_deployment serves one generator, not {len(served)}; leave it unset (or "
            "false) to serve several behind one ingress",
            field="one_deployment",
        )
    model = served[0]
    return (
        t.cast("Deployment", OneModelDeployment)
        .options(**one_deployment_options(model, ingress_options))
        .bind(
            config_payload(model.generator),
            model.served_name,
            model.replica_options(),
            model.max_tokens_limit,
            takes_vllm_fields(model.generator),
            *ingress_args,
        )
    )
