"""The arguments a vLLM generator's engine starts with: its fields and `engine_args`, the CPU
defaults, fitted to where Ray placed it (`placement.placed_engine_args`)."""

from __future__ import annotations

import typing as t

from rig_ray.generator.cpu import auto_cpu_dtype

if t.TYPE_CHECKING:
    from rig_ray.generator.vllm_ import VLLMGenerator

CPU_MEMORY_UTILIZATION = 0.3
"""Share of CPU memory a vLLM CPU engine reserves when gpu_memory_utilization is unset (float32
weights and KV cache need more than bf16: 0.1 was too little for SmolLM2)."""


def engine_kwargs(generator: VLLMGenerator, path: str, on_cpu: bool) -> dict[str, t.Any]:
    kwargs: dict[str, t.Any] = {
        "gpu_memory_utilization": generator.gpu_memory_utilization,
        "dtype": generator.dtype,
        "quantization": generator.quantization,
        "enforce_eager": generator.enforce_eager,
        "trust_remote_code": generator.trust_remote_code,
        "max_model_len": generator.max_model_len,
        "tensor_parallel_size": generator.tensor_parallel_size,
        "disable_log_stats": False,  # keeps per-request metrics on the outputs
    }
    if on_cpu:
        kwargs["gpu_memory_utilization"] = kwargs["gpu_memory_utilization"] or (
            CPU_MEMORY_UTILIZATION
        )
        if generator.dtype == "auto":
            kwargs["dtype"] = _auto_cpu_dtype(path, generator.quantization)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    from rig_ray.cluster.placement import placed_engine_args

    return placed_engine_args({**kwargs, **generator.engine_args}, on_cpu)


def _auto_cpu_dtype(path: str, quantization: str | None) -> str:
    """What `dtype="auto"` runs on a CPU: float32, unless the weights are quantized (their
    kernels pick the dtype), where a 16-bit dtype the CPU would emulate becomes float32."""
    if quantization is None:
        return "float32"
    return auto_cpu_dtype(path) or "auto"
