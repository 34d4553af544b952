"""`RemoteGenerator`: the handle on a GeneratorActor, a Generator whose calls run in the actor."""

from __future__ import annotations

import asyncio
import contextlib
import typing as t

from pydantic import PrivateAttr

from rig_ray.errors import InvalidGeneratorError, PoolMemberError
from rig_ray.generator.base import (
    GeneratedChunk,
    GeneratedMessage,
    GeneratedText,
    Generator,
    Messages,
)
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.registry import identifier_of
from rig_ray.message import Message

if t.TYPE_CHECKING:
    from rig_ray.generator.rounds import Prompt


TEARDOWN_UNLOAD_S = 120.0
"""How long `teardown` waits for the actor to unload its engine before killing it."""


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

    async def capacity(self) -> int | None:
        """The actor's generator's capacity (its engine's max_num_seqs for vLLM), or None."""
        value = await self._await("capacity")
        return None if value is None else int(value)

    def engine_capacity(self) -> int | None:
        """`capacity()` for a caller without an event loop (a batch driver planning its
        rows): the actor's engine's max_num_seqs, or None."""
        value = self._get("capacity")
        return None if value is None else int(value)

    def info(self) -> dict[str, t.Any]:
        """The actor's pid, node id, placement group id, loaded state and RSS."""
        return t.cast(dict[str, t.Any], self._get("info"))

    def teardown(self, *, unload_timeout_s: float = TEARDOWN_UNLOAD_S) -> None:
        """Unload the engine in the actor (its processes and memory go with it), then end the
        actor and free its placement group; this handle is unusable after.

        An actor that does not unload within `unload_timeout_s` (hung, or already gone) is
        killed all the same.
        """
        import ray

        if self._torn_down:
            return
        self._torn_down = True
        with contextlib.suppress(Exception):
            ray.get(self._handle.unload.remote(), timeout=unload_timeout_s)
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

    async def _stream_prompt(
        self, prompt: str | list[Message], params: GenerateParams | None
    ) -> t.AsyncIterator[GeneratedChunk]:
        """Chunks from the actor's stream as it makes them; leaving early cancels it there."""
        import ray

        refs = self.actor.stream.options(num_returns="streaming").remote(prompt, params)
        try:
            while True:
                try:
                    chunk = await (await anext(refs))
                except StopAsyncIteration:
                    return
                except Exception as error:
                    raise self._describe_failure(error) from error
                yield chunk
        finally:
            with contextlib.suppress(Exception):
                ray.cancel(refs)
