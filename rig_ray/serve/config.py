"""The app builder for Serve config files: `import_path: rig_ray.serve.config:app_builder`
with `args` validated as `AppArgs` (see jobs/serve_config.yaml)."""

from __future__ import annotations

import typing as t

from pydantic import BaseModel, ConfigDict, Field

from rig_ray.serve.app import ServedModel, build_app

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
    """Options of the ingress deployment (num_replicas, ray_actor_options, ...)."""


def _register_providers(providers: dict[str, str]) -> None:
    import importlib

    from rig_ray.generator.registry import register_generator

    for provider, path in providers.items():
        module, _, name = path.partition(":")
        register_generator(provider, getattr(importlib.import_module(module), name))


def app_builder(args: dict[str, t.Any]) -> Application:
    """Build the app of a Serve config file. The API key comes from $RIG_RAY_API_KEY where
    the app is built (the `serve run` process, or the cluster for `serve deploy`)."""
    providers = dict(args.get("providers") or {}) if isinstance(args, dict) else {}
    _register_providers(providers)  # before the identifiers in `models` are read
    parsed = AppArgs.model_validate(args)
    return build_app(parsed.models, ingress_options=parsed.ingress_options)
