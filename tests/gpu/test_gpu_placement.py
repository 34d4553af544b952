"""The placement rule and engine lifecycle on real GPUs: a tensor-parallel engine (TP=2)
through `remote()`, a batch job and Serve (skipped below 2 GPUs), its GPU memory back once its
actor ends, the engine sized as `vllm.LLM` sizes one, and two engines on halves of one GPU.
Skipped without CUDA."""

from __future__ import annotations

import gc
import time
import typing as t
from pathlib import Path

import pytest

import rig_ray as rr
from tests.ray.conftest import own_ray_and_serve

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.engine,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
two_gpus = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs"
)
ENGINE = (
    "gpu_memory_utilization=0.3,max_model_len=256,enforce_eager=True,max_tokens=4,temperature=0"
)
GiB = 1 << 30


def free_gpu_bytes(device: int = 0) -> int:
    gc.collect()
    return int(torch.cuda.mem_get_info(device)[0])


def wait_for_free(before: int, slack: int = 512 << 20, timeout_s: float = 120.0) -> int:
    """Free memory of GPU 0 once it is back within `slack` of `before` (or after timeout)."""
    deadline = time.monotonic() + timeout_s
    while (free := free_gpu_bytes()) < before - slack and time.monotonic() < deadline:
        time.sleep(0.5)
    return free


@pytest.fixture(scope="module")
def gpu_ray() -> t.Iterator[t.Any]:
    with own_ray_and_serve(num_gpus=torch.cuda.device_count()) as ray:
        yield ray


def tp2(path: Path) -> str:
    return f"vllm!{path},tensor_parallel_size=2,{ENGINE}"


def test_vllm_max_num_seqs_is_what_vllm_llm_gets(tiny_llama_path: Path) -> None:
    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    generator = rr.get_generator(f"vllm!{tiny_llama_path},{ENGINE}").load()
    try:
        ours = generator._engine.vllm_config.scheduler_config
        theirs = (
            EngineArgs(model=str(tiny_llama_path), gpu_memory_utilization=0.3, max_model_len=256)
            .create_engine_config(usage_context=UsageContext.LLM_CLASS)
            .scheduler_config
        )
        assert ours.max_num_seqs == theirs.max_num_seqs
        assert ours.max_num_batched_tokens == theirs.max_num_batched_tokens
    finally:
        generator.unload()


def test_a_batch_plan_is_sized_as_the_engine_on_the_gpu_runs(gpu_ray, tiny_llama_path) -> None:
    """The driver reads vLLM's table on the GPU's node (a task that takes no GPU): the figure
    it plans with is the max_num_seqs the engine gets once loaded on that GPU."""
    pytest.importorskip("vllm")
    from rig_ray.batch import concurrency
    from rig_ray.cluster.placement import place
    from rig_ray.generator import vllm_sizing

    generator = rr.get_generator(f"vllm!{tiny_llama_path},{ENGINE}")
    placement = place(generator, num_gpus=1, num_cpus=1)
    planned = vllm_sizing.max_num_seqs_for(generator, vllm_sizing.OFFLINE, placement)
    [plan] = concurrency.plan([generator], None, None, [placement])
    remote = rr.remote(generator, num_cpus=1, num_gpus=1)
    try:
        remote.load()
        assert planned == remote.engine_capacity()
        assert plan.row_requests == vllm_sizing.in_flight(planned)
    finally:
        remote.teardown()


def test_remote_unload_and_teardown_free_the_gpu(gpu_ray, tiny_llama_path: Path) -> None:
    pytest.importorskip("vllm")
    before = free_gpu_bytes()
    remote = rr.remote(f"vllm!{tiny_llama_path},{ENGINE}", num_cpus=1, num_gpus=1)
    try:
        remote.load()
        assert free_gpu_bytes() < before - GiB  # the engine reserved its share
        remote.unload()
        assert wait_for_free(before) >= before - (512 << 20)
        remote.load()
        assert free_gpu_bytes() < before - GiB
    finally:
        remote.teardown()  # unloads first: the memory is back when the actor is gone
    assert wait_for_free(before) >= before - (512 << 20)


@two_gpus
def test_tp2_through_remote(gpu_ray, tiny_llama_path: Path) -> None:
    pytest.importorskip("vllm")
    before = free_gpu_bytes()
    remote = rr.remote(tp2(tiny_llama_path), num_cpus=1)
    try:
        [[reply]] = remote.generate(["Count to three:"])
        assert reply.usage.output_tokens >= 1
        assert remote.info()["placement_group"] is not None
        remote.unload()  # returns once vLLM's Ray workers have given their GPUs back
        assert free_gpu_bytes(0) >= before - (512 << 20)  # at once, with no wait here
        [[reply]] = remote.generate(["Count to three:"])  # a reload on the same bundles
        assert reply.usage.output_tokens >= 1
    finally:
        remote.teardown()
    assert wait_for_free(before) >= before - (512 << 20)


@two_gpus
def test_tp2_through_a_batch_job(gpu_ray, tiny_llama_path: Path, tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    from rig_ray.batch import run

    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"prompt": "Count to {n}"}}\n' for n in range(8)))
    summary = run(
        str(source), str(tmp_path / "out"), generator=tp2(tiny_llama_path), progress=False
    )
    assert (summary.generations_written, summary.failed) == (8, 0)
    groups = gpu_ray.util.placement_group_table().values()
    assert all(group["state"] == "REMOVED" for group in groups)  # GPUs given back


def test_two_engines_on_halves_of_one_gpu_both_start(
    gpu_ray, tiny_llama_path: Path, tmp_path: Path
) -> None:
    """Two batch actors on halves of GPU 0, each engine at vLLM's memory default for a half
    (0.45): they load in turn, each measuring only its own memory, and both generate."""
    pytest.importorskip("vllm")
    from rig_ray.batch import run

    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"prompt": "Count to {n}"}}\n' for n in range(16)))
    generator = f"vllm!{tiny_llama_path},max_model_len=256,enforce_eager=True,max_tokens=4"
    summary = run(
        str(source),
        str(tmp_path / "out"),
        generator=generator,
        num_gpus=0.5,
        replicas=2,
        batch_size=2,
        progress=False,
    )
    assert (summary.generations_written, summary.failed) == (16, 0)


@two_gpus
def test_tp2_through_serve(gpu_ray, tiny_llama_path: Path) -> None:
    pytest.importorskip("vllm")
    from ray import serve

    from rig_ray.serve import ServedModel, build_app

    served = ServedModel(generator=tp2(tiny_llama_path), name="tp2", health_probe=False)
    before = free_gpu_bytes()
    serve.run(build_app([served]), name="tp2", route_prefix=None)
    try:
        handle = serve.get_app_handle("tp2")  # its routes, in either app
        messages = [rr.Message(role="user", content="Count to three:")]
        [reply] = handle.chat.remote("tp2", "req-1", messages, rr.GenerateParams(), 1).result()
        assert reply.usage.output_tokens >= 1
    finally:
        serve.delete("tp2")
    assert wait_for_free(before) >= before - (512 << 20)
