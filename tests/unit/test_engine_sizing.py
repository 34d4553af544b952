"""Sizing from vLLM's own defaults, without an engine: the figure each entry point gets, how
many rows a batch actor keeps in flight, and a Serve replica's max_ongoing_requests."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys

import pytest

import rig_ray as rr
from rig_ray.batch import concurrency
from rig_ray.generator import vllm_node_sizing, vllm_sizing
from rig_ray.serve import ServedModel
from tests.fakes import FixedGenerator


def vllm_table(context: str, world: int = 1) -> int:
    """max_num_seqs straight from vLLM's table for this platform (tokens cap it)."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    tokens, seqs = EngineArgs.get_batch_defaults(world)
    return min(seqs[UsageContext(context)], tokens[UsageContext(context)])


@pytest.fixture(scope="module")
def vllm_here() -> None:
    pytest.importorskip("vllm")


def test_explicit_max_num_seqs_wins_without_vllm() -> None:
    assert vllm_sizing.default_max_num_seqs({"max_num_seqs": 7}, vllm_sizing.OFFLINE) == 7


@pytest.mark.usefixtures("vllm_here")
def test_each_context_gets_vllms_own_table() -> None:
    offline = vllm_sizing.default_max_num_seqs({}, vllm_sizing.OFFLINE)
    server = vllm_sizing.default_max_num_seqs({}, vllm_sizing.SERVER)
    assert (offline, server) == (vllm_table("LLM_CLASS"), vllm_table("OPENAI_API_SERVER"))
    doubled = vllm_sizing.default_max_num_seqs(
        {"performance_mode": "throughput"}, vllm_sizing.OFFLINE
    )
    assert offline is not None and doubled == 2 * offline
    generator = rr.VLLMGenerator(model="m", engine_args={"max_num_seqs": 48})
    assert vllm_sizing.max_num_seqs_for(generator) == 48
    assert vllm_sizing.max_num_seqs_for(FixedGenerator(model="f")) is None


@pytest.mark.slow
@pytest.mark.usefixtures("vllm_here")
def test_a_process_without_vllm_reads_the_table_in_a_child_and_stays_lean() -> None:
    script = (
        "import json, sys\n"
        "from rig_ray.generator import vllm_sizing as v\n"
        "figures = [v.default_max_num_seqs({}, c) for c in (v.OFFLINE, v.SERVER)]\n"
        "held = [m for m in ('vllm', 'torch', 'transformers') if m in sys.modules]\n"
        "print(json.dumps([figures, held]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    figures, held = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures == [vllm_table("LLM_CLASS"), vllm_table("OPENAI_API_SERVER")]
    assert held == []  # the driver never holds vLLM, torch or transformers for a lookup


@pytest.mark.usefixtures("vllm_here")
def test_a_vllm_batch_actor_keeps_more_than_max_num_seqs_in_flight(caplog) -> None:
    seqs = vllm_table("LLM_CLASS")
    with caplog.at_level(logging.WARNING, logger="rig_ray.batch"):
        (plan,) = concurrency.plan([rr.VLLMGenerator(model="m")], None, None)
        (sized,) = concurrency.plan([rr.VLLMGenerator(model="m")], 8, None)
    assert plan.row_requests == math.ceil(1.1 * seqs)
    assert plan.batch_size * plan.max_concurrent_batches >= 2 * plan.row_requests
    assert sized.batch_size == 8 and 8 * sized.max_concurrent_batches >= sized.row_requests
    assert not caplog.records  # sized from the engine: nothing to warn about


@pytest.mark.usefixtures("vllm_here")
def test_a_pool_member_takes_more_rows_where_it_makes_under_one_request_a_row() -> None:
    """Each of four generators makes a quarter of the rows' one generation: its actors take
    four times the rows to keep its engine as full; with four generations a row, one each."""
    four = [rr.VLLMGenerator(model=name) for name in "abcd"]
    (alone,) = concurrency.plan(four[:1], None, None)
    pooled = concurrency.plan(four, None, None, num_generations=1)
    for member in pooled:  # a quarter of its rows' requests still reach twice its slots
        assert member.row_requests == alone.row_requests  # the engine's own cap
        rows = member.batch_size * member.max_concurrent_batches
        assert rows / 4 >= 2 * member.row_requests > rows / 4 - 2 * member.batch_size
    assert concurrency.plan(four, None, None, num_generations=4)[0] == alone


@pytest.mark.usefixtures("vllm_here")
def test_explicit_settings_that_cannot_fill_the_engine_warn_once(caplog) -> None:
    members = [rr.VLLMGenerator(model="a"), rr.VLLMGenerator(model="b")]
    with caplog.at_level(logging.WARNING, logger="rig_ray.batch"):
        plans = concurrency.plan(members, 4, 2)
    assert [(p.batch_size, p.max_concurrent_batches) for p in plans] == [(4, 2), (4, 2)]
    assert len(caplog.records) == 1
    assert "4 x 2" in caplog.text and "cannot fill the engine" in caplog.text


def test_engines_batching_per_call_keep_one_call_per_batch(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="rig_ray.batch"):
        (plan,) = concurrency.plan([FixedGenerator(model="f")], None, None)
        (explicit,) = concurrency.plan([FixedGenerator(model="f")], 2, 1)
    assert plan == concurrency.Concurrency(64, 4, None)
    assert explicit == concurrency.Concurrency(2, 1, None)
    assert not caplog.records


@pytest.mark.usefixtures("vllm_here")
def test_serve_takes_at_least_max_num_seqs_for_vllm() -> None:
    seqs = vllm_table("OPENAI_API_SERVER")
    vllm_model = ServedModel(generator="vllm!m")
    assert vllm_model.deployment_options()["max_ongoing_requests"] >= seqs
    assert vllm_model.ongoing_requests() == max(64, math.ceil(1.1 * seqs))
    explicit = ServedModel(generator="vllm!m", max_ongoing_requests=8)
    assert explicit.deployment_options()["max_ongoing_requests"] == 8
    big = ServedModel(generator=rr.VLLMGenerator(model="m", engine_args={"max_num_seqs": 500}))
    assert big.ongoing_requests() == 550


def test_serve_keeps_64_for_other_generators() -> None:
    assert ServedModel(generator=FixedGenerator(model="f")).ongoing_requests() == 64


async def test_a_generator_without_an_engine_has_no_capacity() -> None:
    assert await FixedGenerator(model="f").capacity() is None


@pytest.mark.usefixtures("vllm_here")
async def test_an_unloaded_vllm_generator_reports_what_vllm_will_give_it() -> None:
    generator = rr.VLLMGenerator(model="m")
    assert await generator.capacity() == vllm_table("LLM_CLASS")
    generator._usage_context = vllm_sizing.SERVER  # as a Serve replica sets it
    assert await generator.capacity() == vllm_table("OPENAI_API_SERVER")
    assert "usage_context" not in generator.to_identifier()


def nodes(monkeypatch: pytest.MonkeyPatch, *listed: dict[str, object]) -> None:
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: list(listed))


def node(node_id: str, alive: bool = True, **resources: float) -> dict[str, object]:
    return {"NodeID": node_id, "Alive": alive, "Resources": resources}


def test_an_engine_is_sized_on_a_node_that_has_what_it_takes(monkeypatch) -> None:
    from rig_ray.cluster.placement import place

    nodes(
        monkeypatch,
        node("cpu", CPU=64),
        node("gone", alive=False, CPU=8, GPU=8, **{"accelerator_type:H100": 1}),
        node("a100", CPU=32, GPU=4, **{"accelerator_type:A100": 1}),
        node("h100", CPU=32, GPU=8, disk=2, **{"accelerator_type:H100": 1}),
    )
    generator = rr.VLLMGenerator(model="m")
    assert vllm_node_sizing.engine_nodes(place(generator, num_gpus=0.5)) == ["a100", "h100"]
    h100 = place(generator, num_gpus=1, accelerator_type="H100")
    assert vllm_node_sizing.engine_nodes(h100) == ["h100"]
    with_disk = place(generator, num_gpus=1, resources={"disk": 1})
    assert vllm_node_sizing.engine_nodes(with_disk) == ["h100"]
    sharded = rr.VLLMGenerator(model="m", tensor_parallel_size=8)
    assert vllm_node_sizing.engine_nodes(place(sharded)) == ["h100"]  # all 8 on one node
    too_wide = rr.VLLMGenerator(model="m", engine_args={"tensor_parallel_size": 16})
    assert vllm_node_sizing.engine_nodes(place(too_wide)) == []


def test_an_engine_without_gpus_is_sized_here_with_no_ray_call(monkeypatch) -> None:
    from rig_ray.cluster.placement import place

    def no_call() -> None:
        raise AssertionError("Ray asked where no GPU is placed")

    import ray

    monkeypatch.setattr(ray, "nodes", no_call)
    monkeypatch.setattr(vllm_sizing, "batch_defaults", lambda world: {"LLM_CLASS": (9, 99)})
    on_cpu = place(rr.VLLMGenerator(model="m"), num_cpus=1)
    assert vllm_sizing.engine_table(1, on_cpu) == {"LLM_CLASS": (9, 99)}
    assert vllm_sizing.engine_table(1, None) == {"LLM_CLASS": (9, 99)}


def test_with_no_node_to_read_on_the_engine_is_sized_here_and_says_so(monkeypatch, caplog) -> None:
    from rig_ray.cluster.placement import place

    nodes(monkeypatch, node("cpu", CPU=64))
    monkeypatch.setattr(vllm_sizing, "batch_defaults", lambda world: {"LLM_CLASS": (9, 99)})
    placement = place(rr.VLLMGenerator(model="m"), num_gpus=1, accelerator_type="H100")
    with caplog.at_level(logging.WARNING, logger="rig_ray.vllm"):
        table, read_on = vllm_node_sizing.read_on_engine_node(1, placement)
    assert (table, read_on) == ({"LLM_CLASS": (9, 99)}, None)
    [record] = caplog.records
    assert "1 GPU, H100" in record.getMessage()
    assert "no live node of the cluster has them" in record.getMessage()
    assert "LLM_CLASS: 9 sequences" in record.getMessage()


def test_a_failed_read_on_the_node_is_sized_here_and_quotes_no_secret(monkeypatch, caplog) -> None:
    from rig_ray.cluster.placement import place

    nodes(monkeypatch, node("h100", CPU=32, GPU=8))

    def fails(world: int, node: str) -> None:
        raise RuntimeError("worker could not reach https://user:hunter2@mirror.example/simple")

    monkeypatch.setattr(vllm_node_sizing, "_read_on_node", fails)
    monkeypatch.setattr(vllm_sizing, "batch_defaults", lambda world: {"LLM_CLASS": (9, 99)})
    placement = place(rr.VLLMGenerator(model="m"), num_gpus=1)
    with caplog.at_level(logging.WARNING, logger="rig_ray.vllm"):
        table, read_on = vllm_node_sizing.read_on_engine_node(1, placement)
    assert (table, read_on) == ({"LLM_CLASS": (9, 99)}, None)
    [record] = caplog.records
    assert "reading them on node h100 failed (RuntimeError: worker could not" in record.getMessage()
    assert "hunter2" not in record.getMessage()


def test_a_lookup_is_made_once_while_callers_wait_for_it() -> None:
    import threading

    once = vllm_sizing._Once()
    release, calls, answers = threading.Event(), [], []

    def lookup() -> dict:
        calls.append(1)
        release.wait(30)
        return {"LLM_CLASS": (5, 50)}

    callers = [
        threading.Thread(target=lambda: answers.append(once(("here", 1), lookup))) for _ in range(3)
    ]
    for caller in callers:
        caller.start()
    release.set()
    for caller in callers:
        caller.join(30)
    assert calls == [1] and answers == [{"LLM_CLASS": (5, 50)}] * 3
    assert once(("here", 1), lambda: pytest.fail("looked up again")) == {"LLM_CLASS": (5, 50)}

    def fails() -> None:
        raise OSError("no table")

    for _ in range(2):  # a failure is the answer too: not looked up again
        with pytest.raises(OSError, match="no table"):
            once(("here", 2), fails)


def test_a_lookup_started_ahead_is_the_one_the_sizing_gets(monkeypatch) -> None:
    import threading

    from rig_ray.cluster.placement import place

    monkeypatch.setattr(vllm_sizing, "_lookups", vllm_sizing._Once())
    started, release, reads = threading.Event(), threading.Event(), []

    def read_here(world: int) -> dict:
        reads.append(world)
        started.set()
        release.wait(30)
        return {"LLM_CLASS": (7, 70), "OPENAI_API_SERVER": (3, 30)}

    monkeypatch.setattr(vllm_sizing, "_read_here", read_here)
    monkeypatch.setattr(vllm_sizing, "ray_running", lambda: False)
    plain = rr.VLLMGenerator(model="m")
    sized = rr.VLLMGenerator(model="m", engine_args={"max_num_seqs": 4})
    on_gpu = rr.VLLMGenerator(model="m", tensor_parallel_size=2)
    members = [plain, sized, on_gpu, FixedGenerator(model="f")]
    vllm_sizing.prefetch(members, [place(member) for member in members])
    assert started.wait(30)  # begun in the background, before anyone asked
    release.set()
    assert vllm_sizing.max_num_seqs_for(plain, placement=place(plain)) == 7
    assert vllm_sizing.max_num_seqs_for(sized) == 4
    # one read, of this machine: explicit sizes need none, and an engine on GPUs is read
    # where it will run, once Ray runs
    assert reads == [1]


def test_a_lookup_still_running_at_exit_ends_with_the_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    vllm_sizing._children.add(child)
    try:
        vllm_sizing._end_children()
        assert child.wait(10) != 0
    finally:
        vllm_sizing._children.discard(child)
        child.kill()


def test_on_a_cluster_of_several_gpu_kinds_the_largest_figures_are_kept(monkeypatch) -> None:
    from rig_ray.cluster.placement import place

    nodes(
        monkeypatch,
        node("a100-1", GPU=8, **{"accelerator_type:A100": 1}),
        node("a100-2", GPU=8, **{"accelerator_type:A100": 1}),
        node("h100", GPU=8, **{"accelerator_type:H100": 1}),
        node("unlabelled", GPU=4),
    )
    read: list[str] = []
    by_node = {"a100-1": 256, "h100": 1024, "unlabelled": 512}

    def read_on(world: int, where: str) -> dict:
        read.append(where)
        return {"LLM_CLASS": (by_node[where], 8192), "OPENAI_API_SERVER": (256, 2048)}

    monkeypatch.setattr(vllm_node_sizing, "_read_on_node", read_on)
    placement = place(rr.VLLMGenerator(model="m"), num_gpus=1)
    table, read_on_node = vllm_node_sizing.read_on_engine_node(1, placement)
    assert read == ["a100-1", "h100", "unlabelled"]  # one node of each kind
    assert table == {"LLM_CLASS": (1024, 8192), "OPENAI_API_SERVER": (256, 2048)}
    assert read_on_node == "a100-1"
    read.clear()
    h100 = place(rr.VLLMGenerator(model="m"), num_gpus=1, accelerator_type="H100")
    assert vllm_node_sizing.read_on_engine_node(1, h100)[0]["LLM_CLASS"] == (1024, 8192)
    assert read == ["h100"]
