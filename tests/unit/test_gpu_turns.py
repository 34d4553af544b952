"""`gpu_turns`: the turn of a GPU is one lock on the node, and who waits for it."""

from __future__ import annotations

import sys
import threading
import types
import uuid

import pytest

from rig_ray.cluster import gpu_turns
from rig_ray.cluster.gpu_turns import load_in_turn, shared_gpus
from rig_ray.generator.vllm_ import VLLMGenerator
from tests.fakes import EchoGenerator


def test_one_process_at_a_time_holds_a_gpus_turn() -> None:
    """A second holder (here another open file of the same lock) waits until the first
    lets go."""
    gpu = f"test-{uuid.uuid4().hex[:8]}"
    first_holds, let_go, second_holds = threading.Event(), threading.Event(), threading.Event()

    def hold(holds: threading.Event, until: threading.Event | None) -> None:
        with gpu_turns._turn(gpu):
            holds.set()
            if until is not None:
                until.wait(30)

    first = threading.Thread(target=hold, args=(first_holds, let_go))
    first.start()
    assert first_holds.wait(30)
    second = threading.Thread(target=hold, args=(second_holds, None))
    second.start()
    assert not second_holds.wait(0.5)  # it waits while the first holds the turn
    let_go.set()
    assert second_holds.wait(30)
    first.join(30)
    second.join(30)


def test_a_process_without_a_share_of_a_gpu_loads_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert shared_gpus() == []  # this test process holds no GPU share
    load_in_turn(EchoGenerator(model="e"))  # nothing to wait for

    class Driver:  # a driver on a running Ray: Ray refuses to say what it was assigned
        def get_assigned_resources(self) -> dict[str, float]:
            raise AssertionError("This method is only available when the process is a worker")

    ray = types.SimpleNamespace(is_initialized=lambda: True, get_runtime_context=Driver)
    monkeypatch.setitem(sys.modules, "ray", ray)
    assert shared_gpus() == []


def test_vllm_engines_wait_for_their_turn_unless_their_cache_is_sized() -> None:
    assert VLLMGenerator(model="m").measures_free_gpu_memory()
    sized = VLLMGenerator(model="m", engine_args={"kv_cache_memory_bytes": 2**30})
    assert not sized.measures_free_gpu_memory()  # vLLM does not measure a set cache
    assert not EchoGenerator(model="e").measures_free_gpu_memory()
