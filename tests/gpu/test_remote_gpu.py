"""A remote generator on a CUDA GPU: unloading in the actor gives the GPU memory back, so a
pool can swap models on the same GPU. Skipped without CUDA."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest

import rig_ray as rr

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.engine,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
MiB = 1 << 20


@pytest.fixture
def gpu_ray() -> t.Iterator[t.Any]:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="warning")
    yield ray
    ray.shutdown()


def free_gpu_bytes() -> int:
    return int(torch.cuda.mem_get_info()[0])


def test_remote_unload_frees_gpu_memory(gpu_ray, smollm2_path: Path) -> None:
    identifier = f"transformers!{smollm2_path},device=cuda,max_tokens=4,temperature=0"
    remote = rr.remote(identifier, num_cpus=1, num_gpus=1)
    try:
        for _ in range(2):  # load, generate, unload; and the same again in the same actor
            remote.load()
            [[reply]] = remote.generate(["The capital of France is"])
            assert reply.usage.output_tokens >= 1
            loaded = free_gpu_bytes()
            remote.unload()
            assert free_gpu_bytes() - loaded > 200 * MiB  # the 270 MB of bf16 weights
    finally:
        remote.teardown()
