"""`build_app`: a Ray Serve application serving generators over OpenAI-compatible routes: one
generator's routes and engine in one deployment, several generators each in a deployment of
its own behind one ingress."""

from __future__ import annotations

import typing as t

from rig_ray.errors import ServeConfigError
from rig_ray.generator.base import Generator
from rig_ray.serve.auth import auth_from
from rig_ray.serve.limits import RequestLimits
from rig_ray.serve.served_model import (
    ServedModel,
    deployment_name,
    takes_vllm_fields,
    to_generator,
)

if t.TYPE_CHECKING:
    from ray.serve import Application, Deployment

APP_NAME = "rig_ray"
"""The Serve application name that `rig-ray serve` and jobs/serve_config.yaml use."""
INGRESS_NAME = "OpenAIIngress"
"""The name of the ingress deployment."""
DEFAULT_REQUEST_TIMEOUT_S = 600.0
"""Seconds a request may take before it is stopped with 504."""

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
    else:  # one generator (or something else, which to_generator turns away)
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
            served.append(ServedModel(generator=to_generator(item), name=item_name, **options))
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
