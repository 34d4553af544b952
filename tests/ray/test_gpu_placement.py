"""The placement rule on a Ray with logical GPUs (no real GPU): an engine of 1, 2 or 4 GPUs
gets them in `remote()`, batch actors and Serve replicas alike, as a generator in each reports
(its bundles, and the GPU ids and CUDA_VISIBLE_DEVICES of its actor and of one worker task per
GPU bundle, as vLLM's Ray executor starts)."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import typing as t

import pytest

import rig_ray as rr
from rig_ray.cluster.placement_groups import BatchGroups
from tests.ray.conftest import own_ray_and_serve
from tests.ray.placement_members import HoldsGroupGpus, NotesLoadSpan, WhereAmI, load_spans

CPU = 0.25
GPUS = 4
SIZES = [pytest.param(1, marks=pytest.mark.slow), 2, pytest.param(4, marks=pytest.mark.slow)]
"""Engines of 1, 2 and 4 GPUs; 2 runs in `make test`, all three in `make test-all`."""


@pytest.fixture(scope="module")
def gpu_ray() -> t.Iterator[t.Any]:
    """A local Ray of its own with 2 CPUs and 4 logical GPUs, and Serve on a free port."""
    with own_ray_and_serve(num_cpus=2, num_gpus=GPUS) as ray:
        yield ray


def check(report: dict[str, t.Any], tp: int) -> None:
    """What an engine of `tp` GPUs must have got, and all GPUs free again afterwards."""
    if tp == 1:  # the actor takes the GPU itself
        assert report["vllm_fitted"] == {"tensor_parallel_size": 2}  # no group: vLLM chooses
        assert report["bundles"] is None
        assert len(report["gpu_ids"]) == 1
        assert report["cuda_visible_devices"] == report["gpu_ids"][0]
        return
    assert report["strategy"] == "STRICT_PACK"
    fitted = report["vllm_fitted"]  # a vLLM engine here takes the bundles, whole GPUs each
    assert fitted["distributed_executor_backend"] == "ray"
    assert "gpu_memory_utilization" not in fitted
    assert [bundle["GPU"] for bundle in report["bundles"]] == [1.0] * tp
    assert report["bundles"][0]["CPU"] == CPU  # the actor's CPUs, in the first bundle
    assert report["gpu_ids"] == []  # the actor holds no GPU; its workers hold one each
    workers = report["workers"]
    assert len(workers) == tp
    ids = [worker["gpu_ids"] for worker in workers]
    assert all(len(one) == 1 for one in ids)
    assert len({one[0] for one in ids}) == tp  # distinct GPUs
    assert [w["cuda_visible_devices"] for w in workers] == [one[0] for one in ids]
    assert len({w["node_id"] for w in workers}) == 1


def num_gpus_for(tp: int) -> float | None:
    return None  # unset: an engine of one GPU takes one on a cluster with GPUs, as vLLM's


def all_gpus_free(ray: t.Any) -> bool:
    return bool(ray.available_resources().get("GPU", 0) == GPUS)


def wait_until(condition: t.Callable[[], bool], timeout_s: float = 60.0) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.parametrize("tp", SIZES)
def test_remote_places_the_engines_gpus(gpu_ray: t.Any, tp: int) -> None:
    remote = rr.remote(
        WhereAmI(model="w", tensor_parallel_size=tp), num_cpus=CPU, num_gpus=num_gpus_for(tp)
    )
    try:
        [[reply]] = remote.generate([[rr.Message(role="user", content="where?")]])
        check(json.loads(reply.message.content), tp)
    finally:
        remote.teardown()
    assert wait_until(lambda: all_gpus_free(gpu_ray))


@pytest.mark.parametrize("tp", SIZES)
def test_batch_actors_place_the_engines_gpus(gpu_ray: t.Any, tp: int) -> None:
    from rig_ray.batch import generate

    dataset = gpu_ray.data.from_items([{"id": str(n), "prompt": f"p{n}"} for n in range(4)])
    with BatchGroups.scope():
        rows = generate(
            dataset,
            generator=WhereAmI(model="w", tensor_parallel_size=tp),
            num_cpus=CPU,
            num_gpus=num_gpus_for(tp),
            batch_size=2,
        ).take_all()
    assert len(rows) == 4 and all(row["error"] is None for row in rows)
    for row in rows:
        check(json.loads(row["text"]), tp)
    assert wait_until(lambda: all_gpus_free(gpu_ray))


def test_an_unload_returns_once_the_engines_ray_workers_gave_their_gpus_back(
    gpu_ray: t.Any, tmp_path: t.Any
) -> None:
    """vLLM's Ray executor ends its workers without waiting; the unload waits for their GPUs
    (and so their memory) to be free in the actor's placement group, for the next engine."""
    log = tmp_path / "unloads.jsonl"
    remote = rr.remote(
        HoldsGroupGpus(model="w", tensor_parallel_size=2, log=str(log)), num_cpus=CPU
    )
    try:
        for _ in range(2):  # a second load after the unload finds the GPUs free again
            remote.load()
            remote.unload()
    finally:
        remote.teardown()
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    assert seen == [{"before": 2.0, "loaded": 0.0, "waited": True, "after": 2.0}] * 2
    assert wait_until(lambda: all_gpus_free(gpu_ray))


def test_an_engine_that_runs_where_it_is_put_takes_no_gpu_unasked(gpu_ray: t.Any) -> None:
    remote = rr.remote(WhereAmI(model="w", on_a_gpu_where_found=False), num_cpus=CPU)
    try:
        [[reply]] = remote.generate([[rr.Message(role="user", content="where?")]])
        assert json.loads(reply.message.content)["gpu_ids"] == []
    finally:
        remote.teardown()


def test_an_engine_that_no_node_can_hold_is_refused_rather_than_left_waiting(
    gpu_ray: t.Any,
) -> None:
    from rig_ray.batch.placement import gpus_per_actor
    from rig_ray.errors import PlacementError

    too_wide = WhereAmI(model="w", tensor_parallel_size=8)  # this Ray's one node has 4 GPUs
    with pytest.raises(PlacementError, match=r"needs 8 GPU\(s\) on one node.*most on one node: 4"):
        rr.remote(too_wide, num_cpus=CPU)
    with pytest.raises(PlacementError, match="no node of this Ray has them"):
        gpus_per_actor([too_wide], None)
    assert gpus_per_actor([WhereAmI(model="w", tensor_parallel_size=4)], None) == 4
    assert all_gpus_free(gpu_ray)  # nothing was reserved


def test_an_engine_started_in_the_driver_is_left_as_asked(gpu_ray: t.Any) -> None:
    """A driver with Ray running holds no resources (Ray refuses to say which): a generator
    loaded there keeps its own settings."""
    from rig_ray.generator.vllm_engine_args import engine_kwargs

    kwargs = engine_kwargs(rr.VLLMGenerator(model="m", tensor_parallel_size=2), "m", False)
    assert "gpu_memory_utilization" not in kwargs
    assert "distributed_executor_backend" not in kwargs


def test_an_engine_on_a_share_of_a_gpu_takes_that_share_of_its_memory(gpu_ray: t.Any) -> None:
    remote = rr.remote(WhereAmI(model="w"), num_cpus=CPU, num_gpus=0.5)
    try:
        [[reply]] = remote.generate([[rr.Message(role="user", content="where?")]])
        fitted = json.loads(reply.message.content)["vllm_fitted"]
        assert fitted["gpu_memory_utilization"] == 0.45  # two such engines fit on one GPU
    finally:
        remote.teardown()


@pytest.mark.parametrize("tp", [pytest.param(tp, marks=pytest.mark.slow) for tp in (1, 2, 4)])
def test_serve_replicas_place_the_engines_gpus(gpu_ray: t.Any, tp: int) -> None:
    from ray import serve

    from rig_ray.serve import ServedModel, build_app

    actor: dict[str, t.Any] = {"num_cpus": CPU}  # num_gpus unset, as for vLLM's engine
    served = ServedModel(
        generator=WhereAmI(model="where", tensor_parallel_size=tp),
        ray_actor_options=actor,
        health_probe=False,
    )
    app = f"placement-{tp}"
    serve.run(build_app([served]), name=app, route_prefix=None)
    try:
        handle = serve.get_app_handle(app)  # its routes, in either app
        messages = [rr.Message(role="user", content="where?")]
        [reply] = handle.chat.remote("where", "req-1", messages, rr.GenerateParams(), 1).result()
        check(json.loads(reply.message.content), tp)
    finally:
        serve.delete(app)
    assert wait_until(lambda: all_gpus_free(gpu_ray))


@pytest.mark.slow  # pipeline runs of their own
def test_a_pipeline_resumed_after_a_complete_tensor_parallel_stage(
    gpu_ray: t.Any, tmp_path: t.Any
) -> None:
    """Swap mode reruns a complete stage only to check its folder (no engine loads): an
    engine over two GPUs there is no reason to refuse the run."""
    from rig_ray.batch import Stage, run_pipeline

    source = tmp_path / "q.jsonl"
    source.write_text("".join(json.dumps({"id": f"q{n}", "q": f"q{n}?"}) + "\n" for n in range(2)))
    stages = [
        Stage("where", generator=WhereAmI(model="w", tensor_parallel_size=2), template="$q"),
        Stage("echo", generator=WhereAmI(model="e"), template="$text", num_cpus=CPU),
    ]
    out = str(tmp_path / "out")
    first = run_pipeline(str(source), out, stages=stages, gpu_sharing="swap", progress=False)
    assert [s.generations_written for s in first.stages] == [2, 2]
    again = run_pipeline(str(source), out, stages=stages, gpu_sharing="swap", progress=False)
    assert [s.generations_written for s in again.stages] == [0, 0]
    assert [s.skipped for s in again.stages] == [2, 2]
    assert wait_until(lambda: all_gpus_free(gpu_ray))


@pytest.mark.slow  # pipeline runs of their own
def test_pipeline_stages_whose_engines_this_ray_cannot_hold_are_refused(
    gpu_ray: t.Any, tmp_path: t.Any
) -> None:
    """On a Ray of the job's own, engines that need more GPUs at once than it has would
    wait forever: swap refuses the stage, stream the stages together, naming them."""
    from rig_ray.batch import Stage, run_pipeline
    from rig_ray.errors import PlacementError

    source = tmp_path / "q.jsonl"
    source.write_text(json.dumps({"id": "q0", "q": "q?"}) + "\n")
    wide = WhereAmI(model="w", tensor_parallel_size=2)
    three = Stage("three", generator=wide, template="$q", replicas=3)  # 6 GPUs of 4
    with pytest.raises(PlacementError, match=r"the stage 'three' needs 6 GPU\(s\) at once"):
        run_pipeline(str(source), str(tmp_path / "a"), stages=[three], gpu_sharing="swap")
    stages = [
        Stage("one", generator=wide, template="$q"),
        Stage("two", generator=wide, template="$text", replicas=2),
    ]
    with pytest.raises(PlacementError, match=r"'one', 'two', running at once.*in turn"):
        run_pipeline(str(source), str(tmp_path / "b"), stages=stages, gpu_sharing="stream")
    assert all_gpus_free(gpu_ray)  # nothing was started
    summary = run_pipeline(  # in turn they fit
        str(source), str(tmp_path / "b"), stages=stages, gpu_sharing="swap", progress=False
    )
    assert [s.generations_written for s in summary.stages] == [1, 1]
    assert wait_until(lambda: all_gpus_free(gpu_ray))


SERVE_ON_ITS_OWN_RAY = """
import sys, ray
from rig_ray.serve.cli import main
ray.init(num_cpus=2, num_gpus=4, include_dashboard=False)  # as `rig-ray serve` starts one
sys.exit(main(["-g", "transformers!/models/none", "--replicas", "5", "--port", sys.argv[1]]))
"""


@pytest.mark.slow  # a Ray of its own, in a process of its own
def test_serve_refuses_first_replicas_whose_gpus_its_own_ray_cannot_hold(tmp_path: t.Any) -> None:
    import subprocess
    import sys

    from tests.serve.support import free_port

    done = subprocess.run(
        [sys.executable, "-c", SERVE_ON_ITS_OWN_RAY, str(free_port())],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "the served models' first replicas needs 5 GPU(s) at once" in done.stderr
    assert "this Ray has 4" in done.stderr


@pytest.mark.slow  # engine actors of their own
@pytest.mark.parametrize("path", ["pipeline", "batch", "serve"])
def test_engines_on_shares_of_a_gpu_load_one_at_a_time(
    gpu_ray: t.Any, tmp_path: t.Any, path: str
) -> None:
    """vLLM sizes its cache from the GPU's free memory as it loads: engines sharing a GPU
    must not load side by side, whichever path starts them (the actors of two pipeline
    stages, loaded at once as stream mode does; a batch job's actors; a model's Serve
    replicas). Each load takes 1 s and notes its span and GPU: no two spans on one GPU
    overlap, and some GPU had two."""
    log = str(tmp_path / "loads.jsonl")
    loads = {"pipeline": _pipeline_loads, "batch": _batch_loads, "serve": _serve_loads}[path]
    expected = loads(gpu_ray, log)
    spans = load_spans(log)
    assert len(spans) == expected
    by_gpu: dict[str, list[list[t.Any]]] = {}
    for span in spans:
        [gpu] = span[2]
        by_gpu.setdefault(gpu, []).append(span)
    assert max(map(len, by_gpu.values())) >= 2, spans  # a GPU shared by two engines
    for shared in by_gpu.values():
        assert all(one[1] <= two[0] for one, two in itertools.pairwise(shared)), spans
    assert wait_until(lambda: all_gpus_free(gpu_ray))


def _pipeline_loads(ray: t.Any, log: str) -> int:
    from rig_ray.batch import Stage
    from rig_ray.batch.pipeline_engines import StageEngines

    stages = [
        Stage(
            name,
            generator=NotesLoadSpan(model="shared", log=log),
            template="$q",
            num_gpus=0.5,
            **options,
        )
        for name, options in (("a", {"replicas": 2}), ("b", {}))
    ]
    engines = [StageEngines(stage, CPU) for stage in stages]
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # as stream mode loads stages
            list(pool.map(lambda e: e.load(), engines))
    finally:
        for stage_engines in engines:
            stage_engines.unload()
    return 3


def _batch_loads(ray: t.Any, log: str) -> int:
    from rig_ray.batch import generate

    dataset = ray.data.from_items([{"id": str(n), "prompt": f"p{n}"} for n in range(4)])
    with BatchGroups.scope():
        rows = generate(
            dataset,
            generator=NotesLoadSpan(model="shared", log=log, loads=2),  # ends once both loaded
            num_cpus=CPU,
            num_gpus=0.5,
            replicas=2,
            batch_size=1,
        ).take_all()
    assert len(rows) == 4
    return 2


def _serve_loads(ray: t.Any, log: str) -> int:
    from ray import serve

    from rig_ray.serve import ServedModel, build_app

    served = ServedModel(
        generator=NotesLoadSpan(model="shared", log=log),
        ray_actor_options={"num_cpus": CPU, "num_gpus": 0.5},
        num_replicas=2,
        health_probe=False,
    )
    serve.run(build_app([served]), name="shared-gpu", route_prefix=None)
    serve.delete("shared-gpu")
    return 2


def test_a_batch_job_of_engines_of_several_sizes_counts_their_gpus_as_they_are(
    gpu_ray: t.Any, tmp_path: t.Any
) -> None:
    """Engines of 2, 1 and 1 GPUs take 4 GPUs together: they fit this Ray's 4 (counting the
    largest for every actor would have asked for 6, and refused the job)."""
    from rig_ray.batch import run

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": str(n), "q": f"q{n}"}) + "\n" for n in range(6)))
    members = [
        WhereAmI(model="two", tensor_parallel_size=2),
        WhereAmI(model="one"),
        WhereAmI(model="also-one"),
    ]
    summary = run(
        str(source), str(tmp_path / "out"), generators=members, template="$q", progress=False
    )
    assert summary.generations_written == 6 and summary.failed == 0
    assert wait_until(lambda: all_gpus_free(gpu_ray))
