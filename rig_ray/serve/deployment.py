"""The per-generator Serve deployment: builds and loads its engine from a config payload, and
groups concurrent requests with `@serve.batch` (and a BatchMerger behind it) so they share one
generate call."""

from __future__ import annotations

import asyncio
import collections
import typing as t

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from rig_ray.cluster.runtime import portable
from rig_ray.errors import ServeRequestError
from rig_ray.generator.base import (
    GeneratedMessage,
    GeneratedText,
    GenerateParams,
    Generator,
)
from rig_ray.generator.local import LocalGenerator
from rig_ray.generator.registry import register_generator
from rig_ray.message import Message
from rig_ray.serve import response_format
from rig_ray.serve.batching import BatchMerger

_T = t.TypeVar("_T")
_FORMED_AT_ONCE = 1024
"""Batches Serve may hand over at once: all go to the merger, which decides what runs."""

ChatItem = tuple[list[Message], GenerateParams]
TextItem = tuple[str, GenerateParams]


class BatchSettings(BaseModel):
    """How requests are grouped; the deployment's `user_config`, so `serve deploy` with new
    values changes them in the running replicas without reloading the model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch_size: int = Field(32, ge=1)
    """Most items (requests x n) in one generate call."""
    batch_wait_timeout_s: float = Field(0.05, ge=0)
    """Longest wait for more requests once the first of a batch has arrived."""


class BatchStats:
    """Sizes of the batches this replica sent to its generator."""

    def __init__(self, keep: int = 1000) -> None:
        self.recent: collections.deque[int] = collections.deque(maxlen=keep)
        self.batches = 0
        self.items = 0
        self.largest = 0

    def record(self, size: int) -> None:
        self.recent.append(size)
        self.batches += 1
        self.items += size
        self.largest = max(self.largest, size)

    def summary(self) -> dict[str, t.Any]:
        return {
            "batches": self.batches,
            "items": self.items,
            "largest": self.largest,
            "recent": list(self.recent),
        }


def _batch_failure(error: BaseException, name: str) -> ServeRequestError:
    """What a generate call that failed as a whole means for each of its requests."""
    if isinstance(error, NotImplementedError):
        return ServeRequestError(
            f"model {name!r} does not support this endpoint ({error})",
            code="unsupported_endpoint",
            param="model",
        )
    return ServeRequestError(
        f"model {name!r} failed ({type(error).__name__}: {error})",
        status_code=500,
        error_type="server_error",
        code="generator_error",
    )


@serve.deployment(max_constructor_retry_count=3)
class GeneratorDeployment:
    """One generator, built and loaded in each replica from its config payload."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self, payload: bytes, name: str, max_concurrent_batches: int = 1
    ) -> None:
        from ray import cloudpickle

        generator, providers = cloudpickle.loads(payload)
        for provider, generator_cls in providers.items():
            register_generator(provider, generator_cls)
        self._generator: Generator = generator
        self._name = name
        self._stats = BatchStats()
        # @serve.batch forms the batches; the mergers join those that wait for the engine.
        self._chat = BatchMerger(self._generate_messages, concurrency=max_concurrent_batches)
        self._text = BatchMerger(self._generate_texts, concurrency=max_concurrent_batches)
        defaults = BatchSettings()
        batch = serve.batch(
            max_batch_size=defaults.max_batch_size,
            batch_wait_timeout_s=defaults.batch_wait_timeout_s,
            max_concurrent_batches=_FORMED_AT_ONCE,
        )
        self._chat_batch: t.Any = batch(self._chat.submit)
        self._text_batch: t.Any = batch(self._text.submit)
        await self._blocking(self._generator.load)

    async def _blocking(self, fn: t.Callable[[], _T]) -> _T:
        """A blocking engine call, off the event loop (on a local engine's own thread)."""
        if isinstance(self._generator, LocalGenerator):
            return await self._generator._in_engine_thread(fn)
        return await asyncio.to_thread(fn)

    def reconfigure(self, user_config: dict[str, t.Any]) -> None:
        settings = BatchSettings.model_validate(user_config)
        for handler in (self._chat_batch, self._text_batch):
            handler.set_max_batch_size(settings.max_batch_size)
            handler.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self._chat.max_items = self._text.max_items = settings.max_batch_size

    def check_health(self) -> None:
        if not self._generator.is_loaded:
            raise RuntimeError(f"the engine of model {self._name!r} is not loaded")

    def stats(self) -> dict[str, t.Any]:
        """Sizes of the generate calls this replica made: batches, items, largest, recent."""
        return self._stats.summary()

    async def chat(
        self, messages: list[Message], params: GenerateParams, n: int = 1
    ) -> list[GeneratedMessage | BaseException]:
        """`n` replies to one conversation; each is an item of the current batch."""
        if (refused := response_format.refusal(self._generator, params, self._name)) is not None:
            return [refused] * n
        replies = await asyncio.gather(*(self._chat_batch((messages, params)) for _ in range(n)))
        return portable(replies)

    async def complete(
        self, prompts: list[str], params: GenerateParams, n: int = 1
    ) -> list[GeneratedText | BaseException]:
        """`n` completions of each prompt, in prompt order; each is an item of the batch."""
        items = [(prompt, params) for prompt in prompts for _ in range(n)]
        return portable(await asyncio.gather(*(self._text_batch(item) for item in items)))

    async def _generate_messages(
        self, items: list[ChatItem]
    ) -> list[GeneratedMessage | BaseException]:
        self._stats.record(len(items))
        try:
            results = await self._generator.generate_messages(
                [messages for messages, _ in items], [params for _, params in items]
            )
        except Exception as error:
            return [_batch_failure(error, self._name)] * len(items)
        return self._checked(results, len(items))

    async def _generate_texts(self, items: list[TextItem]) -> list[GeneratedText | BaseException]:
        self._stats.record(len(items))
        try:
            results = await self._generator.generate_texts(
                [text for text, _ in items], [params for _, params in items]
            )
        except Exception as error:
            return [_batch_failure(error, self._name)] * len(items)
        return self._checked(results, len(items))

    def _checked(self, results: t.Sequence[_T], count: int) -> list[_T | BaseException]:
        if len(results) == count:
            return list(results)
        error = RuntimeError(f"the generator returned {len(results)} results for {count} items")
        return [_batch_failure(error, self._name)] * count
