"""The placement rule: GPUs per engine from the generator's parallel sizes, and what
`remote()`, batch actors and Serve replicas are given for them (no Ray needed)."""

from __future__ import annotations

import typing as t

import pytest

from rig_ray import VLLMGenerator
from rig_ray.batch.pipeline import _actor_args
from rig_ray.cluster.placement import gpus_per_engine, place
from rig_ray.cluster.placement_groups import BatchGroups
from rig_ray.errors import PlacementError
from rig_ray.serve import ServedModel
from tests.fakes import EchoGenerator
from tests.ray.placement_members import WhereAmI


def test_gpus_per_engine_multiplies_the_parallel_sizes_engine_args_winning() -> None:
    assert gpus_per_engine(EchoGenerator(model="e")) == 1
    assert gpus_per_engine(VLLMGenerator(model="m")) == 1
    assert gpus_per_engine(VLLMGenerator(model="m", tensor_parallel_size=2)) == 2
    both = VLLMGenerator(
        model="m", tensor_parallel_size=2, engine_args={"pipeline_parallel_size": 2}
    )
    assert gpus_per_engine(both) == 4
    overridden = VLLMGenerator(
        model="m",
        tensor_parallel_size=2,
        engine_args={"tensor_parallel_size": 4, "data_parallel_size": 2},
    )
    assert gpus_per_engine(overridden) == 8
    with pytest.raises(PlacementError, match="pipeline_parallel_size must be at least 1"):
        gpus_per_engine(VLLMGenerator(model="m", engine_args={"pipeline_parallel_size": 0}))


def test_one_gpu_engines_take_num_gpus_on_the_actor_and_no_group() -> None:
    plain = place(EchoGenerator(model="e"), num_cpus=0.5)
    assert (plain.num_cpus, plain.num_gpus, plain.bundles) == (0.5, 0, None)
    gpu = place(VLLMGenerator(model="m"), num_gpus=1, accelerator_type="H100", resources={"x": 1})
    assert gpu.bundles is None and gpu.total_gpus == 1
    assert gpu.ray_options() == {
        "num_cpus": 1,
        "num_gpus": 1,
        "resources": {"x": 1},
        "accelerator_type": "H100",
    }
    assert place(VLLMGenerator(model="m"), num_gpus=0.5).num_gpus == 0.5  # a shared GPU


@pytest.mark.parametrize("tp", [2, 4])
def test_a_sharded_engine_gets_one_gpu_bundle_per_shard_packed_on_one_node(tp: int) -> None:
    generator = VLLMGenerator(model="m", tensor_parallel_size=tp)
    for num_gpus in (None, tp):  # unset, or the same number: the same placement
        placement = place(generator, num_gpus=num_gpus, num_cpus=0.25, accelerator_type="A100")
        assert placement.num_gpus == 0 and placement.total_gpus == tp
        assert placement.ray_options() == {"num_cpus": 0.25, "num_gpus": 0}
        tag = {"accelerator_type:A100": 0.001}
        assert placement.bundles == (
            {"GPU": 1, "CPU": 0.25, **tag},
            *[{"GPU": 1, **tag}] * (tp - 1),
        )


@pytest.mark.parametrize(
    ("generator", "num_gpus", "words"),
    [
        (VLLMGenerator(model="m", tensor_parallel_size=2), 1, "runs on 2 GPUs"),
        (VLLMGenerator(model="m", tensor_parallel_size=2), 0, "runs on 2 GPUs"),
        (VLLMGenerator(model="m", engine_args={"pipeline_parallel_size": 2}), 4, "runs on 2"),
        (VLLMGenerator(model="m"), 2, "uses one GPU"),
        (VLLMGenerator(model="m"), -1, "must be a number of at least 0"),
    ],
)
def test_a_num_gpus_that_disagrees_with_the_engine_is_an_error(
    generator: VLLMGenerator, num_gpus: float, words: str
) -> None:
    with pytest.raises(PlacementError, match=words) as caught:
        place(generator, num_gpus=num_gpus)
    assert caught.value.num_gpus in (num_gpus, None)


@pytest.mark.parametrize("count", [-1, float("nan"), float("inf"), "2", True])
@pytest.mark.parametrize("name", ["num_cpus", "num_gpus"])
def test_a_count_of_cpus_or_gpus_that_is_no_count_is_refused_in_every_path(
    name: str, count: t.Any
) -> None:
    # One rule for `remote()`, batch actors and Serve replicas, before Ray is asked.
    with pytest.raises(PlacementError, match=f"{name} must be a number of at least 0"):
        place(VLLMGenerator(model="m"), **{name: count})
    with pytest.raises(ValueError, match=f"{name} must be a number of at least 0"):
        ServedModel(generator=VLLMGenerator(model="m"), ray_actor_options={name: count})


def test_serve_replicas_follow_the_rule() -> None:
    served = ServedModel(
        generator=VLLMGenerator(model="m", tensor_parallel_size=2),
        ray_actor_options={"num_cpus": 0.5, "runtime_env": {"env_vars": {"A": "1"}}},
    )
    options = served.deployment_options()
    assert options["ray_actor_options"] == {
        "num_cpus": 0.5,
        "num_gpus": 0,
        "runtime_env": {"env_vars": {"A": "1"}},
    }
    assert options["placement_group_bundles"] == [{"GPU": 1, "CPU": 0.5}, {"GPU": 1}]
    assert options["placement_group_strategy"] == "STRICT_PACK"
    one = ServedModel(generator=VLLMGenerator(model="m"), ray_actor_options={"num_gpus": 1})
    assert one.deployment_options()["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 1}
    assert "placement_group_bundles" not in one.deployment_options()
    wrong = ServedModel(
        generator=VLLMGenerator(model="m", tensor_parallel_size=4),
        ray_actor_options={"num_gpus": 1},
    )
    with pytest.raises(PlacementError, match="runs on 4 GPUs"):
        wrong.deployment_options()


def test_batch_actors_follow_the_rule() -> None:
    args = _actor_args(place(WhereAmI(model="w", tensor_parallel_size=2), num_cpus=0.25))
    assert (args["num_cpus"], args["num_gpus"]) == (0.25, 0)
    assert isinstance(args["ray_remote_args_fn"], BatchGroups)
    assert _actor_args(place(WhereAmI(model="w"), num_gpus=1)) == {"num_cpus": 1, "num_gpus": 1}


def test_batch_and_remote_refuse_a_disagreeing_num_gpus_before_ray_starts(tmp_path) -> None:
    import ray

    from rig_ray import remote
    from rig_ray.batch import run

    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "x"}\n')
    sharded = WhereAmI(model="w", tensor_parallel_size=2)
    was_running = ray.is_initialized()
    with pytest.raises(PlacementError, match="runs on 2 GPUs"):
        run(str(source), str(tmp_path / "out"), generator=sharded, num_gpus=1, progress=False)
    with pytest.raises(PlacementError, match="runs on 2 GPUs"):
        remote(sharded, num_gpus=3)
    assert ray.is_initialized() == was_running


def test_an_engine_that_finds_a_gpu_takes_one_where_the_cluster_has_gpus(monkeypatch) -> None:
    from rig_ray.cluster import placement
    from rig_ray.generator.transformers_ import TransformersGenerator

    vllm = VLLMGenerator(model="m")
    monkeypatch.setattr(placement, "cluster_gpus", lambda: 0.0)
    assert place(vllm).num_gpus == 0  # no GPU in the cluster: a CPU engine
    monkeypatch.setattr(placement, "cluster_gpus", lambda: 8.0)
    assert place(vllm).num_gpus == 1  # vLLM would take GPU 0 anyway: it is reserved
    assert place(vllm, num_gpus=0).num_gpus == 0  # kept off the GPUs when asked
    assert place(vllm, num_gpus=0.5).num_gpus == 0.5
    assert place(TransformersGenerator(model="m")).num_gpus == 1
    assert place(TransformersGenerator(model="m", device="cuda:1")).num_gpus == 1
    assert place(TransformersGenerator(model="m", device="cpu")).num_gpus == 0
    assert place(EchoGenerator(model="e")).num_gpus == 0  # runs where it is put
    spread = TransformersGenerator(model="m", device_map="auto")  # over the GPUs it sees
    assert place(spread).num_gpus == 1  # never the node's every GPU, unreserved
    assert place(spread, num_gpus=2).num_gpus == 2  # its actor holds both: no group
    assert place(spread, num_gpus=2).bundles is None
    with pytest.raises(PlacementError, match="in whole GPUs"):
        place(spread, num_gpus=1.5)
    with pytest.raises(PlacementError, match="device_map='auto'"):
        place(TransformersGenerator(model="m"), num_gpus=2)
    assert place(TransformersGenerator(model="m", device_map="cpu")).num_gpus == 0
    monkeypatch.setattr(placement, "cluster_gpus", lambda: 0.0)
    assert place(vllm).num_gpus == 0


def test_an_engine_is_fitted_to_where_ray_put_it(monkeypatch) -> None:
    from rig_ray.cluster import placement
    from rig_ray.generator.vllm_engine_args import engine_kwargs

    fit = placement.placed_engine_args
    tp2 = {"tensor_parallel_size": 2}
    assert fit(tp2, on_cpu=False) == tp2  # not in a group, no Ray: vLLM chooses
    monkeypatch.setattr(placement, "_in_a_group", lambda: True)
    assert fit(tp2, on_cpu=False)["distributed_executor_backend"] == "ray"
    assert fit({"pipeline_parallel_size": 2}, on_cpu=False)["distributed_executor_backend"] == "ray"
    chosen = {**tp2, "distributed_executor_backend": "mp"}
    assert fit(chosen, on_cpu=False) == chosen  # an explicit choice wins
    assert fit({"tensor_parallel_size": 1}, on_cpu=False) == {"tensor_parallel_size": 1}
    kwargs = engine_kwargs(VLLMGenerator(model="m", tensor_parallel_size=2), "m", on_cpu=False)
    assert kwargs["distributed_executor_backend"] == "ray"

    monkeypatch.setattr(placement, "_gpu_share", lambda: 0.5)  # an actor on half a GPU
    assert fit({}, on_cpu=False) == {"gpu_memory_utilization": 0.45}
    assert fit({"gpu_memory_utilization": 0.3}, on_cpu=False)["gpu_memory_utilization"] == 0.3
    assert fit({}, on_cpu=True) == {}  # a CPU engine's share is its own (KV cache memory)
    shared = engine_kwargs(VLLMGenerator(model="m"), "m", on_cpu=False)
    assert shared["gpu_memory_utilization"] == 0.45


def test_an_unload_waits_for_the_groups_gpus_and_says_so_when_they_stay_held(caplog) -> None:
    from rig_ray.cluster.group_gpus import GroupGpus, await_free

    before = GroupGpus("GPU_group_abc", 2.0)
    readings = iter([0.0, 0.0, 1.0, 2.0])
    asked: list[str] = []

    def available(resource: str) -> float:
        asked.append(resource)
        return next(readings)

    assert await_free(before, poll_s=0, available=available)
    assert asked == ["GPU_group_abc"] * 4  # until all its GPUs were free again
    assert not caplog.records
    assert not await_free(before, wait_s=0, poll_s=0, available=lambda _: 1.0)
    assert "still hold 1 GPU(s) of their placement group" in caplog.text
    assert await_free(GroupGpus("GPU_group_abc", 0.0), wait_s=0, available=lambda _: 0.0)


def test_data_parallel_engines_are_refused_in_favour_of_replicas_on_every_path() -> None:
    from rig_ray.batch.placement import gpus_per_actor
    from rig_ray.serve import build_app

    copies = VLLMGenerator(model="m", engine_args={"data_parallel_size": 2})
    message = r"data_parallel_size=2: .* ask for 2 replicas instead"
    with pytest.raises(PlacementError, match=message):
        place(copies)
    with pytest.raises(PlacementError, match=message):
        gpus_per_actor([copies], None)  # batch.run, before Ray starts
    with pytest.raises(PlacementError, match=message):
        build_app(ServedModel(generator=copies))
    assert place(VLLMGenerator(model="m", engine_args={"data_parallel_size": 1})).bundles is None


def test_before_ray_runs_an_engine_counts_this_machines_gpus(monkeypatch, tmp_path) -> None:
    """An app built before `serve.run` starts a local Ray reserves the GPU that Ray will
    count: this machine's, as NVIDIA's driver lists them, within CUDA_VISIBLE_DEVICES."""
    from rig_ray.cluster import placement
    from rig_ray.generator import vllm_sizing

    monkeypatch.setattr(vllm_sizing, "ray_running", lambda: False)
    monkeypatch.setattr(placement, "NVIDIA_GPUS", str(tmp_path / "none"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert placement.cluster_gpus() == 0
    assert place(VLLMGenerator(model="m")).num_gpus == 0  # a CPU machine: a CPU engine
    gpus = tmp_path / "gpus"
    for address in ("0000:17:00.0", "0000:65:00.0"):
        (gpus / address).mkdir(parents=True)
    monkeypatch.setattr(placement, "NVIDIA_GPUS", str(gpus))
    assert placement.cluster_gpus() == 2
    assert place(VLLMGenerator(model="m")).num_gpus == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert placement.machine_gpus() == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert placement.machine_gpus() == 0
    assert place(VLLMGenerator(model="m")).num_gpus == 0
