"""The per-generator Serve deployment: builds and loads its engine from a config payload,
checks each request against the model's context, and sends it to the engine: straight away
for engines that batch continuously, else grouped with other requests by a BatchMerger.

What it returns to the ingress never holds an engine's own error text: failures become
ServeRequestErrors with a stable code and the request id, and the full error goes to this
replica's log under that id.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import typing as t

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from rig_ray.cluster.gpu_turns import load_in_turn
from rig_ray.errors import ContextLengthError, ServeRequestError
from rig_ray.generator.base import GeneratedChunk, Generator
from rig_ray.generator.local import LocalGenerator
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.priority import ONLINE_PRIORITY, set_priority
from rig_ray.generator.registry import register_generator
from rig_ray.message import Message
from rig_ray.redaction import RedactingFilter, scrubbed_error
from rig_ray.serve import http_errors, response_format
from rig_ray.serve.batching import BatchMerger
from rig_ray.serve.health import HealthProbe, tiny_generation
from rig_ray.serve.limits import check_context, context_error
from rig_ray.serve.streaming import aclose, merge_streams

logger = logging.getLogger("ray.serve")

_T = t.TypeVar("_T")
Prompt = t.Sequence[Message] | str
Item = tuple[Prompt, GenerateParams]
StreamEvent = None | tuple[int, GeneratedChunk] | ServeRequestError
"""What `stream_*` yields: None once the request is accepted, then `(choice, chunk)`s; or an
error (first, for a refused request, or last, for one that failed on the way)."""


class BatchSettings(BaseModel):
    """How requests are grouped; the deployment's `user_config`, so `serve deploy` with new
    values changes them in the running replicas without reloading the model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch_size: int = Field(32, ge=1)
    """Most items (requests x n) in one generate call."""
    batch_wait_timeout_s: float = Field(0.05, ge=0)
    """Longest wait for more requests once the first of a batch has arrived."""


class ReplicaOptions(BaseModel):
    """How a replica drives its generator (set when the app is built)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_concurrent_batches: int = Field(1, ge=1)
    """Generate calls of grouped requests at once."""
    health_probe: bool = True
    """Whether `check_health` runs a tiny generation (see HealthProbe)."""
    health_probe_interval_s: float = Field(30.0, gt=0)
    health_probe_timeout_s: float = Field(300.0, gt=0)


class BatchStats:
    """Sizes of the generate calls this replica made."""

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


def _overrides(generator: Generator, name: str) -> bool:
    return getattr(type(generator), name) is not getattr(Generator, name)


def _for_serving(generator: Generator) -> Generator:
    """The generator, told that it serves online traffic: a vLLM engine then starts in vLLM's
    server context and gets `vllm serve`'s scheduler sizes, and schedules by priority (so
    `/v1/batches` rows, sent at `BATCH_PRIORITY`, run after online requests) unless its
    `engine_args` choose a `scheduling_policy`."""
    from rig_ray.generator import vllm_sizing
    from rig_ray.generator.vllm_ import VLLMGenerator

    if isinstance(generator, VLLMGenerator):
        if "scheduling_policy" not in generator.engine_args:
            engine_args = {**generator.engine_args, "scheduling_policy": "priority"}
            generator = generator.model_copy(update={"engine_args": engine_args})
        generator._usage_context = vllm_sizing.SERVER
    return generator


@serve.deployment(max_constructor_retry_count=3)
class GeneratorDeployment:
    """One generator, built and loaded in each replica from its config payload."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self, payload: bytes, name: str, options: ReplicaOptions | None = None
    ) -> None:
        from ray import cloudpickle

        options = options or ReplicaOptions()
        generator, providers = cloudpickle.loads(payload)
        for provider, generator_cls in providers.items():
            register_generator(provider, generator_cls)
        generator = _for_serving(generator)
        self._generator: Generator = generator
        generator.refuse_past_context()  # the engine then counts each prompt as it renders it
        # Every record of Serve's logger in this replica (Serve's own too) is scrubbed with the
        # generator's secrets, its traceback included.
        for old in [f for f in logger.filters if isinstance(f, RedactingFilter)]:
            logger.removeFilter(old)
        logger.addFilter(RedactingFilter(generator))
        self._name = name
        self._stats = BatchStats()
        defaults = BatchSettings()
        self._mergers = {
            kind: BatchMerger(
                self._call_for(kind),
                concurrency=options.max_concurrent_batches,
                max_items=defaults.max_batch_size,
                wait_s=defaults.batch_wait_timeout_s,
            )
            for kind in ("chat", "text")
        }
        self._health: HealthProbe | None = None
        if options.health_probe:
            self._health = HealthProbe(
                lambda: tiny_generation(self._generator),
                interval_s=options.health_probe_interval_s,
                timeout_s=options.health_probe_timeout_s,
            )
        try:
            await self._blocking(functools.partial(load_in_turn, self._generator))
        except Exception as error:  # Serve shows this error: it must not quote a key
            raise scrubbed_error(error, generator) from None

    async def _blocking(self, fn: t.Callable[[], _T]) -> _T:
        """A blocking engine call, off the event loop (on a local engine's own thread)."""
        if isinstance(self._generator, LocalGenerator):
            return await self._generator._in_engine_thread(fn)
        return await asyncio.to_thread(fn)

    async def __del__(self) -> None:
        """Serve calls this as the replica shuts down: the engine, its processes and its
        memory go with the replica (off the event loop, like the load)."""
        generator = getattr(self, "_generator", None)
        if generator is not None:
            try:
                await self._blocking(generator.unload)
            except Exception:
                logger.exception("the engine of model %r did not unload", self._name)

    def reconfigure(self, user_config: dict[str, t.Any]) -> None:
        settings = BatchSettings.model_validate(user_config)
        for merger in self._mergers.values():
            merger.max_items = settings.max_batch_size
            merger.wait_s = settings.batch_wait_timeout_s

    async def check_health(self) -> None:
        if not self._generator.is_loaded:
            raise RuntimeError(f"the engine of model {self._name!r} is not loaded")
        if self._generator.engine_died:  # Serve replaces the replica, with or without traffic
            raise RuntimeError(f"the engine of model {self._name!r} died")
        if self._health is not None:
            self._health.check()

    async def capacity(self) -> int | None:
        """Requests this replica's engine runs at once (vLLM's max_num_seqs), or None."""
        return await self._generator.capacity()

    async def ready(self) -> bool:
        """Answers once the replica is up, which is once its generator has loaded."""
        return self._generator.is_loaded

    def stats(self) -> dict[str, t.Any]:
        """Sizes of the generate calls this replica made: batches, items, largest, recent."""
        return self._stats.summary()

    # -- requests --------------------------------------------------------------------------

    async def chat(
        self,
        request_id: str,
        messages: list[Message],
        params: GenerateParams,
        n: int = 1,
        priority: int = ONLINE_PRIORITY,
    ) -> list[t.Any]:
        """`n` replies to one conversation, or one ServeRequestError for the request;
        `priority` orders it in an engine that schedules by priority (lower first)."""
        set_priority(priority)  # this call's own task: it ends with the call
        return await self._request(request_id, "chat", [messages], params, n)

    async def complete(
        self,
        request_id: str,
        prompts: list[str],
        params: GenerateParams,
        n: int = 1,
        priority: int = ONLINE_PRIORITY,
    ) -> list[t.Any]:
        """`n` completions of each prompt, in prompt order, or one ServeRequestError."""
        set_priority(priority)
        return await self._request(request_id, "text", list(prompts), params, n)

    async def stream_chat(
        self, request_id: str, messages: list[Message], params: GenerateParams, n: int = 1
    ) -> t.AsyncIterator[StreamEvent]:
        async for item in self._stream(request_id, "chat", [messages], params, n):
            yield item

    async def stream_complete(
        self, request_id: str, prompts: list[str], params: GenerateParams, n: int = 1
    ) -> t.AsyncIterator[StreamEvent]:
        async for item in self._stream(request_id, "text", list(prompts), params, n):
            yield item

    async def _request(
        self, request_id: str, kind: str, prompts: list[t.Any], params: GenerateParams, n: int
    ) -> list[t.Any]:
        try:
            await self._admit(kind, prompts, params)
        except ServeRequestError as error:
            return [error]
        return await self._run(request_id, kind, prompts, params, n)

    async def _run(
        self, request_id: str, kind: str, prompts: list[t.Any], params: GenerateParams, n: int
    ) -> list[t.Any]:
        items: list[Item] = [(prompt, params) for prompt in prompts for _ in range(n)]
        results = await self._generate(kind, items)
        public = [self._public(result, request_id, kind) for result in results]
        failed = [result for result in public if isinstance(result, ServeRequestError)]
        return failed[:1] or public  # one failed item fails the request

    async def _stream(
        self, request_id: str, kind: str, prompts: list[t.Any], params: GenerateParams, n: int
    ) -> t.AsyncIterator[StreamEvent]:
        """The events of a streamed request. It is accepted (None) once its first piece is
        there, so a request refused or failed before that gets an ordinary error reply."""
        method = "stream_message" if kind == "chat" else "stream_text"
        streaming = _overrides(self._generator, method) or _overrides(
            self._generator, "_stream_prompt"
        )
        if not streaming:  # whole replies, grouped like any others
            results = await self._request(request_id, kind, prompts, params, n)
            if isinstance(results[0], ServeRequestError):
                yield results[0]
                return
            yield None
            for index, result in enumerate(results):
                yield index, GeneratedChunk.whole(result)
            return
        try:
            await self._admit(kind, prompts, params)
        except ServeRequestError as error:
            yield error
            return
        streams = [self._open_stream(kind, prompt, params) for prompt in prompts for _ in range(n)]
        merged = merge_streams(streams)
        accepted = False
        try:
            async for index, chunk in merged:
                if self._health is not None:
                    self._health.answered()
                if not accepted:
                    accepted = True
                    yield None
                yield index, chunk
            if not accepted:  # a stream with no piece at all
                yield None
        except Exception as error:
            yield self._public(error, request_id, kind)
        finally:
            await aclose(merged)

    def _open_stream(
        self, kind: str, prompt: t.Any, params: GenerateParams
    ) -> t.AsyncIterator[GeneratedChunk]:
        if kind == "chat":
            return self._generator.stream_message(prompt, params)
        return self._generator.stream_text(prompt, params)

    async def _admit(self, kind: str, prompts: list[t.Any], params: GenerateParams) -> None:
        """400 for a response_format the generator cannot honour, or a prompt past the model's
        context, before it reaches the engine."""
        if (refused := response_format.refusal(self._generator, params, self._name)) is not None:
            raise refused
        param = "messages" if kind == "chat" else "prompt"
        await check_context(self._generator, prompts, params, param=param)

    async def _generate(self, kind: str, items: list[Item]) -> list[t.Any]:
        if self._generator.batches_continuously:
            return await self._call_for(kind)(items)
        return await self._mergers[kind].submit(items)

    def _call_for(self, kind: str) -> t.Callable[[list[Item]], t.Awaitable[list[t.Any]]]:
        """One generate call over `items`; a call that fails whole fails each item with a
        CallFailed."""

        async def call(items: list[Item]) -> list[t.Any]:
            self._stats.record(len(items))
            prompts = [prompt for prompt, _ in items]
            params = [p for _, p in items]
            try:
                if kind == "chat":
                    results: t.Sequence[t.Any] = await self._generator.generate_messages(
                        t.cast(list[list[Message]], prompts), params
                    )
                else:
                    results = await self._generator.generate_texts(
                        t.cast(list[str], prompts), params
                    )
                if len(results) != len(items):
                    raise RuntimeError(
                        f"the generator returned {len(results)} results for {len(items)} items"
                    )
            except Exception as error:
                return [http_errors.CallFailed(error)] * len(items)
            if self._health is not None:
                self._health.answered()
            return list(results)

        return call

    def _public(
        self, result: _T | BaseException, request_id: str, kind: str
    ) -> _T | ServeRequestError:
        """A result as it may leave the replica: errors become ServeRequestErrors with a
        stable code and the request id, logged here in full under that id; a prompt the
        engine found past the context is the usual 400 `context_length_exceeded`."""
        if not isinstance(result, BaseException):
            return result
        if isinstance(result, ContextLengthError):
            return context_error(result, "messages" if kind == "chat" else "prompt")
        return http_errors.item_error(
            result, request_id=request_id, model=self._name, secrets=[self._generator]
        )
