"""The app builder for Serve config files: `import_path: rig_ray.serve.config:app_builder`
with `args` validated as `AppArgs` (see jobs/serve_config.yaml)."""

from __future__ import annotations

import typing as t

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rig_ray.serve.app import DEFAULT_REQUEST_TIMEOUT_S, build_app
from rig_ray.serve.auth import API_KEY_ENV
from rig_ray.serve.limits import RequestLimits
from rig_ray.serve.served_model import ServedModel

if t.TYPE_CHECKING:
    from ray.serve import Application


class AppArgs(BaseModel):
    """The `args` of the application in a Serve config file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    models: list[ServedModel] = Field(min_length=1)
    """One entry per generator: `generator` (an identifier) and its ServedModel settings."""
    providers: dict[str, str] = Field(default_factory=dict)
    """Extra providers to register first: name -> `module:Class` of a Generator subclass."""
    ingress_options: dict[str, t.Any] = Field(default_factory=dict)
    """Options of the ingress deployment (num_replicas, ray_actor_options, ...); in a
    one-deployment app, options of that deployment on top of the model's (its resources stay
    the model's)."""
    api_key_env: str | None = Field(API_KEY_ENV, min_length=1)
    """The environment variable holding the API key where the ingress runs; the ingress
    refuses to start when it is unset or empty there. None (with `no_auth`): no auth."""
    no_auth: bool = False
    """Serve without auth; `api_key_env` must then be null."""
    limits: RequestLimits = Field(default_factory=RequestLimits)
    """Caps on what one request may send (max_body_bytes, max_messages, ...)."""
    request_timeout_s: float = Field(DEFAULT_REQUEST_TIMEOUT_S, gt=0)
    """Seconds a request may take before it is stopped with 504."""
    batch_storage: str | None = Field(None, min_length=1)
    """Folder or pyarrow filesystem URI of /v1/files and /v1/batches (default: under
    RIG_RAY_CACHE where the ingress runs)."""
    batch_max_in_flight: int = Field(4, ge=1)
    """Batch requests in the model deployments at once, all batches together."""
    one_deployment: bool | None = None
    """Unset: one model is served by one deployment (routes and engine, named after the
    model), several by the split app (one deployment each, behind an ingress). true asks for
    one deployment (one model only), false for the split app."""

    @model_validator(mode="after")
    def _auth_is_explicit(self) -> t.Self:
        if self.no_auth == (self.api_key_env is not None):
            raise ValueError(
                "give api_key_env (the variable with the API key) or no_auth: true, not both"
            )
        return self


def _register_providers(providers: dict[str, str]) -> None:
    import importlib

    from rig_ray.generator.registry import register_generator

    for provider, path in providers.items():
        module, _, name = path.partition(":")
        register_generator(provider, getattr(importlib.import_module(module), name))


def app_builder(args: dict[str, t.Any]) -> Application:
    """Build the app of a Serve config file. Auth fails closed: unless the file says
    `no_auth: true`, the ingress reads the key from `api_key_env` ($RIG_RAY_API_KEY by
    default) in its own environment, on the cluster, and does not start without it."""
    providers = dict(args.get("providers") or {}) if isinstance(args, dict) else {}
    _register_providers(providers)  # before the identifiers in `models` are read
    parsed = AppArgs.model_validate(args)
    return build_app(
        parsed.models,
        api_key_env=parsed.api_key_env,
        limits=parsed.limits,
        request_timeout_s=parsed.request_timeout_s,
        ingress_options=parsed.ingress_options,
        batch_storage=parsed.batch_storage,
        batch_max_in_flight=parsed.batch_max_in_flight,
        one_deployment=parsed.one_deployment,
    )
