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

from rig_ray.cluster.gpu_turns import load_in_turn
from rig_ray.cluster.local_ray import init_as_ray_does
from rig_ray.cluster.options import config_payload, restore_payload
from rig_ray.cluster.placement import place, refuse_what_no_node_holds
from rig_ray.cluster.placement_groups import in_group, make_group
from rig_ray.cluster.remote_generator import RemoteGenerator
from rig_ray.cluster.runtime import Gate, portable, portable_errors, rss_bytes, trim_memory
from rig_ray.errors import InvalidGeneratorError
from rig_ray.generator.base import (
    GeneratedChunk,
    GeneratedMessage,
    GeneratedText,
    Generator,
    Messages,
)
from rig_ray.generator.local import LocalGenerator
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.registry import get_generator
from rig_ray.message import Message

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
                await self._blocking(functools.partial(load_in_turn, self._generator))
        return self._generator.is_loaded

    async def unload(self) -> bool:
        """Release the engine and give its memory back; False once unloaded."""
        async with self._gate.exclusive():
            await self._blocking(self._generator.unload)
            await self._blocking(trim_memory)
        return self._generator.is_loaded

    def __ray_shutdown__(self) -> None:
        """Ray calls this when the actor ends on its own (its handles gone): the engine, its
        processes and its memory go with it."""
        with contextlib.suppress(Exception):
            self._generator.unload()

    async def is_loaded(self) -> bool:
        return self._generator.is_loaded

    async def capacity(self) -> int | None:
        """The generator's capacity (requests its engine runs at once), or None."""
        with portable_errors():
            return await self._generator.capacity()

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

    async def stream(
        self, prompt: str | list[Message], params: GenerateParams | None
    ) -> t.AsyncIterator[GeneratedChunk]:
        """The generator's stream of one text or conversation, chunk by chunk (a Ray streaming
        generator: call with `num_returns="streaming"`)."""
        async with self._loaded():
            if isinstance(prompt, str):
                chunks = self._generator.stream_text(prompt, params)
            else:
                chunks = self._generator.stream_message(prompt, params)
            async for chunk in chunks:
                yield chunk

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
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    accelerator_type: str | None = None,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    max_task_retries: int = -1,
    name: str | None = None,
) -> RemoteGenerator:
    """Start a GeneratorActor owning (a copy of) this generator and return its handle.

    The actor starts unloaded. Ray restarts its process up to `max_restarts` times if it
    dies, and retries the calls it was running (`max_task_retries`; -1: while restarts last).
    GPUs follow `rig_ray.cluster.placement`: an engine over several GPUs (tensor x pipeline
    parallel) gets a placement group of that many GPUs on one node; `num_gpus` left unset
    takes what the engine uses (one GPU for a vLLM engine where the cluster has GPUs), and
    one that disagrees is a PlacementError. Starts a local Ray where none runs (as any
    `.remote()` call does), before it looks at the cluster's GPUs.
    """
    import ray

    generator = _as_generator(generator_or_identifier)
    where = functools.partial(
        place,
        generator,
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        resources=resources,
        accelerator_type=accelerator_type,
    )
    where()  # a refused num_gpus fails before Ray starts
    if not ray.is_initialized():
        init_as_ray_does()
    placement = where()
    refuse_what_no_node_holds(placement)
    options: dict[str, t.Any] = {
        "max_restarts": max_restarts,
        "max_task_retries": max_task_retries,
        **placement.ray_options(),
    }
    if name is not None:
        options["name"] = name
    payload = config_payload(generator)
    group = make_group(placement)
    if group is not None:
        options.update(in_group(group))
    try:
        handle = _actor_class().options(**options).remote(payload)
    except BaseException:  # e.g. a name already taken: give the reserved GPUs back
        if group is not None:
            ray.util.remove_placement_group(group)
        raise
    return RemoteGenerator.attach(generator, handle, group)
