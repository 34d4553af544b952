"""Generators on Ray actors: `GeneratorActor` owns one generator, `RemoteGenerator` is the handle.

The actor is built from the generator's config (pickled by value, with the driver's provider
registrations), never from a live engine; it loads the engine itself, on `load()` or on the
first generation call. Ray is imported on first use only, so `import rig_ray` stays light.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import typing as t
import warnings

from pydantic import PrivateAttr

from rig_ray.cluster.options import actor_options, config_payload, restore_payload
from rig_ray.cluster.runtime import Gate, portable, portable_errors, rss_bytes, trim_memory
from rig_ray.errors import InvalidGeneratorError, PoolMemberError
from rig_ray.generator.base import (
    GeneratedMessage,
    GeneratedText,
    GenerateParams,
    Generator,
    Messages,
)
from rig_ray.generator.local import LocalGenerator
from rig_ray.generator.registry import get_generator, identifier_of

if t.TYPE_CHECKING:
    from rig_ray.generator.rounds import Prompt

_T = t.TypeVar("_T")

DEFAULT_MAX_RESTARTS = 3
"""How often Ray restarts a generator actor whose process died, by default."""


class GeneratorActor:
    """What a generator's Ray actor runs: one generator, built in the actor from its config.

    Async actor: generation calls share the actor's event loop (vLLM's async engine batches
    them continuously; transformers runs them one batch at a time on its engine thread);
    `load` and `unload` run alone.
    """

    def __init__(self, payload: bytes) -> None:
        self._generator: Generator = restore_payload(payload)
        self._gate = Gate()

    async def _blocking(self, fn: t.Callable[[], _T]) -> _T:
        """Run a blocking lifecycle call off the loop: on the engine thread of a local engine."""
        if isinstance(self._generator, LocalGenerator):
            return await self._generator._in_engine_thread(fn)
        return await asyncio.to_thread(fn)

    async def load(self) -> bool:
        """Load the engine (idempotent); True once loaded."""
        with portable_errors():
            async with self._gate.exclusive():
                await self._blocking(self._generator.load)
        return self._generator.is_loaded

    async def unload(self) -> bool:
        """Release the engine and give its memory back; False once unloaded."""
        async with self._gate.exclusive():
            await self._blocking(self._generator.unload)
            await self._blocking(trim_memory)
        return self._generator.is_loaded

    async def is_loaded(self) -> bool:
        return self._generator.is_loaded

    @contextlib.asynccontextmanager
    async def _loaded(self) -> t.AsyncIterator[None]:
        """A shared section with the engine loaded: an unload that slipped in between the
        load and the section sends the call round again (loading inside it would deadlock)."""
        while True:
            never_loaded = False  # a load that leaves is_loaded False must not loop for ever
            if not self._generator.is_loaded:
                never_loaded = not await self.load()
            async with self._gate.shared():
                if never_loaded or self._generator.is_loaded:
                    with portable_errors():
                        yield
                    return

    async def generate_texts(
        self, texts: list[str], params: list[GenerateParams]
    ) -> list[GeneratedText | BaseException]:
        async with self._loaded():
            return portable(await self._generator.generate_texts(texts, params))

    async def generate_messages(
        self, messages: Messages, params: list[GenerateParams]
    ) -> list[GeneratedMessage | BaseException]:
        async with self._loaded():
            return portable(await self._generator.generate_messages(messages, params))

    async def generate(
        self, inputs: t.Sequence[Prompt], num_generations: int, params: GenerateParams | None
    ) -> list[list[GeneratedText | GeneratedMessage]]:
        async with self._loaded():
            return await self._generator.agenerate(inputs, num_generations, params=params)

    async def info(self) -> dict[str, t.Any]:
        """Where the actor runs and what it holds: pid, node id, placement group, loaded, RSS."""
        import ray

        context = ray.get_runtime_context()
        group = ray.util.get_current_placement_group()
        return {
            "pid": os.getpid(),
            "node_id": context.get_node_id(),
            "placement_group": group.id.hex() if group is not None else None,
            "loaded": self._generator.is_loaded,
            "rss_bytes": rss_bytes(),
        }


@functools.cache
def _actor_class() -> t.Any:
    import ray

    return ray.remote(GeneratorActor)


def _as_generator(value: Generator | str) -> Generator:
    if isinstance(value, RemoteGenerator):
        raise InvalidGeneratorError(
            "this generator already runs in an actor; pass its config (or identifier) instead"
        )
    if isinstance(value, Generator):
        if isinstance(value, LocalGenerator) and value.is_loaded:
            warnings.warn(
                f"{type(value).__name__}({value.model!r}) is loaded in this process: the actor "
                "loads its own engine from the config, and this one stays in memory here; "
                "call .unload() on it (or pass its identifier) to free that memory",
                RuntimeWarning,
                stacklevel=3,
            )
        return value
    if isinstance(value, str):
        return get_generator(value)
    raise InvalidGeneratorError(
        f"remote() takes a Generator or an identifier string, not {type(value).__name__}"
    )


def remote(
    generator_or_identifier: Generator | str,
    *,
    num_cpus: float = 1,
    num_gpus: float = 0,
    resources: dict[str, float] | None = None,
    accelerator_type: str | None = None,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    max_task_retries: int = -1,
    name: str | None = None,
) -> RemoteGenerator:
    """Start a GeneratorActor owning (a copy of) this generator and return its handle.

    The actor starts unloaded. Ray restarts its process up to `max_restarts` times if it
    dies, and retries the calls it was running (`max_task_retries`; -1: while restarts last).
    """
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    generator = _as_generator(generator_or_identifier)
    options, bundles = actor_options(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources=resources,
        accelerator_type=accelerator_type,
        max_restarts=max_restarts,
        max_task_retries=max_task_retries,
        name=name,
        tensor_parallel_size=int(getattr(generator, "tensor_parallel_size", 1) or 1),
    )
    payload = config_payload(generator)
    group = None
    if bundles is not None:
        group = ray.util.placement_group(bundles, strategy="STRICT_PACK")
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            group, placement_group_capture_child_tasks=True
        )
    try:
        handle = _actor_class().options(**options).remote(payload)
    except BaseException:  # e.g. a name already taken: give the reserved GPUs back
        if group is not None:
            ray.util.remove_placement_group(group)
        raise
    return RemoteGenerator.attach(generator, handle, group)


def describe(generator: Generator) -> str:
    """A generator's identifier, or its class and model when it has no registered provider."""
    inner = generator.inner if isinstance(generator, RemoteGenerator) else generator
    return identifier_of(inner) or f"{type(inner).__name__}(model={inner.model!r})"


class RemoteGenerator(Generator):
    """A generator whose engine lives in a GeneratorActor; every call runs in the actor.

    Build one with `rig_ray.remote(...)`. It is a Generator, so chats, pools and pipelines use
    it unchanged; it pickles with its actor handle, so Ray tasks can call the same actor.
    """

    _inner: Generator = PrivateAttr()
    _handle: t.Any = PrivateAttr(None)
    _group: t.Any = PrivateAttr(None)
    _torn_down: bool = PrivateAttr(False)

    @classmethod
    def attach(cls, inner: Generator, handle: t.Any, group: t.Any = None) -> RemoteGenerator:
        """A handle on an existing actor that owns `inner`'s config."""
        remote = cls(model=inner.model, params=inner.params)
        remote._inner, remote._handle, remote._group = inner, handle, group
        return remote

    def __reduce__(self) -> tuple[t.Any, ...]:
        return (RemoteGenerator.attach, (self._inner, self._handle, self._group))

    def __copy__(self) -> RemoteGenerator:
        return RemoteGenerator.attach(self._inner, self._handle, self._group)

    def __deepcopy__(self, memo: dict[int, t.Any] | None = None) -> RemoteGenerator:
        return self.__copy__()

    def model_copy(
        self, *, update: t.Mapping[str, t.Any] | None = None, deep: bool = False
    ) -> t.Self:
        """Another handle on the same actor; settings live in the actor and cannot change."""
        if update:
            raise InvalidGeneratorError(
                "a remote generator's settings are fixed in its actor; start another with "
                "rig_ray.remote(remote.inner.model_copy(update=...))"
            )
        return t.cast(t.Self, self.__copy__())

    def __eq__(self, other: object) -> bool:
        """Handles on the same actor."""
        if not isinstance(other, RemoteGenerator):
            return NotImplemented
        if self._handle is None or other._handle is None:  # built without remote()
            return self is other
        return bool(self._handle._actor_id == other._handle._actor_id)

    def __hash__(self) -> int:
        return hash(self._handle._actor_id) if self._handle is not None else id(self)

    def __repr__(self) -> str:
        return f"RemoteGenerator({describe(self)!r})"

    @property
    def inner(self) -> Generator:
        """The generator config the actor was built from (never loaded in this process)."""
        return self._inner

    @property
    def actor(self) -> t.Any:
        """The Ray actor handle, e.g. for `ray.kill`."""
        if self._torn_down:
            raise PoolMemberError(
                describe(self), "its actor was torn down; start another with remote()"
            )
        return self._handle

    def to_identifier(self, params: GenerateParams | None = None) -> str:
        return self._inner.to_identifier(params)

    def _describe_failure(self, error: BaseException) -> BaseException:
        """What a failed actor call raises: the actor's own error, or a PoolMemberError when
        the actor is gone (restarts used up, killed, torn down)."""
        from ray.exceptions import RayActorError, RayTaskError

        if isinstance(error, RayTaskError):
            cause = error.cause
            return cause if isinstance(cause, BaseException) else error
        if isinstance(error, RayActorError):
            return PoolMemberError(describe(self), f"its actor died: {error}")
        return error

    def _get(self, method: str, *args: t.Any) -> t.Any:
        """Call an actor method and wait for it (blocking)."""
        import ray

        ref = getattr(self.actor, method).remote(*args)
        try:
            return ray.get(ref)
        except Exception as error:
            raise self._describe_failure(error) from error

    async def _await(self, method: str, *args: t.Any) -> t.Any:
        """Call an actor method and await it; cancelling the await cancels the actor call."""
        import ray

        ref = getattr(self.actor, method).remote(*args)
        try:
            return await ref
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                ray.cancel(ref)
            raise
        except Exception as error:
            raise self._describe_failure(error) from error

    @property
    def is_loaded(self) -> bool:
        return bool(self._get("is_loaded"))

    def load(self) -> t.Self:
        """Load the engine in the actor; returns when it is loaded."""
        self._get("load")
        return self

    def unload(self) -> t.Self:
        """Release the engine and its memory in the actor; returns when it is done."""
        self._get("unload")
        return self

    async def aload(self) -> RemoteGenerator:
        """The async twin of `load`."""
        await self._await("load")
        return self

    async def aunload(self) -> RemoteGenerator:
        """The async twin of `unload`."""
        await self._await("unload")
        return self

    def info(self) -> dict[str, t.Any]:
        """The actor's pid, node id, placement group id, loaded state and RSS."""
        return t.cast(dict[str, t.Any], self._get("info"))

    def teardown(self) -> None:
        """End the actor (and free its placement group); this handle is unusable after."""
        import ray

        if self._torn_down:
            return
        self._torn_down = True
        with contextlib.suppress(Exception):
            ray.kill(self._handle, no_restart=True)
        if self._group is not None:
            with contextlib.suppress(Exception):
                ray.util.remove_placement_group(self._group)

    def submit(
        self,
        inputs: t.Sequence[Prompt],
        num_generations: int = 1,
        params: GenerateParams | None = None,
    ) -> t.Any:
        """Start `generate` in the actor and return its `ray.ObjectRef` at once.

        `ray.get` (or `await`) on it gives what `generate` returns, or raises its error.
        """
        return self.actor.generate.remote(list(inputs), num_generations, params)

    async def generate_messages(
        self, messages: Messages, params: t.Sequence[GenerateParams]
    ) -> t.Sequence[GeneratedMessage | BaseException]:
        conversations = [list(conversation) for conversation in messages]
        return t.cast(
            t.Sequence[GeneratedMessage | BaseException],
            await self._await("generate_messages", conversations, list(params)),
        )

    async def generate_texts(
        self, texts: t.Sequence[str], params: t.Sequence[GenerateParams]
    ) -> t.Sequence[GeneratedText | BaseException]:
        return t.cast(
            t.Sequence[GeneratedText | BaseException],
            await self._await("generate_texts", list(texts), list(params)),
        )
