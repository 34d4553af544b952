"""One generator served by one deployment: the OpenAI routes and the engine in the same
replica, so each streamed chunk crosses one Ray hop (replica to proxy) instead of two
(model replica to ingress to proxy).

`OneModelServer` is the ingress with a `GeneratorDeployment` built inside it; the routes
reach it through a `LocalHandle`, which answers the calls the ingress and the batch runner
make on a Serve handle (`.remote()`, `.options(stream=True)`, awaiting, `cancel()`) on this
replica's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import typing as t

from ray import serve

from rig_ray.errors import ServeConfigError
from rig_ray.serve import direct
from rig_ray.serve.deployment import GeneratorDeployment, ReplicaOptions
from rig_ray.serve.ingress import ModelRoute, OpenAIIngress

if t.TYPE_CHECKING:
    from rig_ray.serve.served_model import ServedModel

RESOURCE_KEYS = frozenset({"num_cpus", "num_gpus", "memory", "resources", "accelerator_type"})
"""`ray_actor_options` that size the engine's replica: the model's alone decide them."""
PLACEMENT_KEYS = frozenset({"placement_group_bundles", "placement_group_strategy"})
SCALING_KEYS = frozenset({"num_replicas", "autoscaling_config"})


def one_deployment_options(
    model: ServedModel, ingress_options: dict[str, t.Any] | None
) -> dict[str, t.Any]:
    """The `.options()` of a one-deployment app: the model's deployment options, then
    `ingress_options` on top. Their `ray_actor_options` are merged into the model's key by
    key (runtime_env, ...); the resources and GPU placement stay the model's, so an
    `ingress_options` that sets them is a ServeConfigError. A `num_replicas` or
    `autoscaling_config` in `ingress_options` replaces the model's scaling."""
    extra = dict(ingress_options or {})
    actor = dict(extra.pop("ray_actor_options", None) or {})
    clash = sorted((actor.keys() & RESOURCE_KEYS) | (extra.keys() & PLACEMENT_KEYS))
    if clash:
        raise ServeConfigError(
            f"ingress_options set {', '.join(clash)}, but one deployment serves this model: "
            "give its resources in the model's ray_actor_options (or ask for the split app, "
            "one_deployment=False, to size an ingress of its own)",
            field="ingress_options",
        )
    options = model.deployment_options()
    if extra.keys() & SCALING_KEYS:
        for key in SCALING_KEYS:
            options.pop(key, None)
    options["ray_actor_options"] = {**options["ray_actor_options"], **actor}
    options.update(extra)
    return options


_Model = t.cast(t.Any, GeneratorDeployment).func_or_class
"""The class behind the model deployment (what @serve.deployment wrapped)."""
_Ingress = t.cast(t.Any, OpenAIIngress).func_or_class
"""The ingress class, with Serve's ASGI wrapper (what @serve.ingress made of it)."""


class _Call:
    """A call on the local model, running as a task; awaited like a Serve response."""

    def __init__(self, coro: t.Coroutine[t.Any, t.Any, t.Any]) -> None:
        self._task = asyncio.ensure_future(coro)

    def __await__(self) -> t.Generator[t.Any, None, t.Any]:
        return self._task.__await__()

    def cancel(self) -> None:
        self._task.cancel()


class _Stream:
    """A streamed call on the local model, iterated like a Serve streaming response."""

    def __init__(self, stream: t.AsyncGenerator[t.Any, None]) -> None:
        self._stream = stream
        self._closing: asyncio.Future[None] | None = None

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> t.Any:
        return await self._stream.__anext__()

    def cancel(self) -> None:
        """Close the stream (which stops its generation); a stream that ended is left."""
        with contextlib.suppress(RuntimeError):  # closed from a task that iterates it
            self._closing = asyncio.ensure_future(self._stream.aclose())


class _Method:
    def __init__(self, method: t.Callable[..., t.Any], stream: bool) -> None:
        self._method = method
        self._stream = stream

    def remote(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        if self._stream:
            return _Stream(self._method(*args, **kwargs))
        result = self._method(*args, **kwargs)
        if asyncio.iscoroutine(result):
            return _Call(result)
        return _Call(_value(result))


async def _value(value: t.Any) -> t.Any:
    return value


class LocalHandle:
    """A Serve handle's calls, made on a model object in this process."""

    def __init__(self, model: t.Any, stream: bool = False) -> None:
        self._model = model
        self._stream = stream

    def options(self, *, stream: bool = False, **_: t.Any) -> LocalHandle:
        return LocalHandle(self._model, stream)

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(getattr(self._model, name), self._stream)


class OneModelServer(_Ingress):  # type: ignore[misc, valid-type]
    """The OpenAI routes and one generator in one replica."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self,
        payload: bytes,
        name: str,
        options: ReplicaOptions,
        max_tokens_limit: int | None,
        vllm_fields: bool,
        *ingress_args: t.Any,
    ) -> None:
        direct.bind_over_closed_connections()  # before Serve binds the port, if it does
        auth = ingress_args[0] if ingress_args else None
        if auth is not None:
            auth.resolve()  # a replica without its key fails before it loads an engine
        model = _Model.__new__(_Model)
        await model.__init__(payload, name, options)
        self._model = model
        route = ModelRoute(LocalHandle(model), max_tokens_limit, vllm_fields)
        await super().__init__({name: route}, *ingress_args)

    async def __del__(self) -> None:
        """The routes stop, then the engine unloads (Serve calls this as the replica ends)."""
        try:
            await super().__del__()
        finally:
            model = getattr(self, "_model", None)
            if model is not None:
                await model.__del__()

    async def check_health(self) -> None:
        await super().check_health()
        await self._model.check_health()

    def reconfigure(self, user_config: dict[str, t.Any]) -> None:
        self._model.reconfigure(user_config)

    async def capacity(self) -> int | None:
        return t.cast(int | None, await self._model.capacity())

    async def ready(self) -> bool:
        return t.cast(bool, await self._model.ready())

    def stats(self) -> dict[str, t.Any]:
        return t.cast(dict[str, t.Any], self._model.stats())


OneModelDeployment = serve.deployment(max_constructor_retry_count=3)(OneModelServer)
