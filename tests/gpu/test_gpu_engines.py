"""Load and unload on a CUDA GPU: unloading gives the memory back. Skipped without CUDA."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

import rig_ray as rr

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.engine,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def free_gpu_bytes() -> int:
    gc.collect()
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


async def test_transformers_unload_frees_gpu_memory(tiny_llama_path: Path) -> None:
    baseline = torch.cuda.memory_allocated()
    generator = rr.TransformersGenerator(model=str(tiny_llama_path), device="cuda").load()
    assert torch.cuda.memory_allocated() > baseline
    [result] = await generator.generate_texts(["gpu"], [rr.GenerateParams(max_tokens=4)])
    assert isinstance(result, rr.GeneratedText)
    generator.unload()
    gc.collect()
    assert torch.cuda.memory_allocated() <= baseline


async def test_vllm_unload_frees_gpu_memory_and_reloads(tiny_llama_path: Path) -> None:
    pytest.importorskip("vllm")
    before = free_gpu_bytes()
    generator = rr.VLLMGenerator(
        model=str(tiny_llama_path),
        gpu_memory_utilization=0.3,
        max_model_len=256,
        enforce_eager=True,  # no graph capture: the check is about memory, and fits its time
    )
    for _ in range(2):  # load, unload, and the same again in one process
        generator.load()
        assert free_gpu_bytes() < before - (1 << 30)  # the engine reserved its share
        [result] = await generator.generate_texts(["gpu"], [rr.GenerateParams(max_tokens=4)])
        assert result.usage.output_tokens == 4 or result.stop_reason == "stop"
        generator.unload()
        assert free_gpu_bytes() > before - (512 << 20)


async def test_vllm_streams_and_batches_continuously_on_gpu(tiny_llama_path: Path) -> None:
    import asyncio
    import time

    pytest.importorskip("vllm")
    generator = rr.VLLMGenerator(
        model=str(tiny_llama_path),
        gpu_memory_utilization=0.3,
        max_model_len=512,
        enforce_eager=True,
    ).load()
    params = rr.GenerateParams(temperature=0, max_tokens=256, extra={"ignore_eos": True})
    try:
        chunks = [c async for c in generator.stream_text("Stream", params)]
        assert len(chunks) >= 10 and chunks[-1].usage.output_tokens == 256
        long_call = asyncio.create_task(generator.generate_texts(["long"] * 8, [params] * 8))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        short = params.merge_with(rr.GenerateParams(max_tokens=4))
        [result] = await generator.generate_texts(["short"], [short])
        short_s = time.monotonic() - started
        await long_call
        long_s = time.monotonic() - started
        assert result.usage.output_tokens == 4 and short_s < long_s / 2
    finally:
        generator.unload()
