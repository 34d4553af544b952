"""EngineLoop without an engine: calls and streams that overlap a stop always end, and a
stream's items cross over in batches when the consumer falls behind."""

from __future__ import annotations

import asyncio
import threading

import pytest

from rig_ray.errors import GenerationError
from rig_ray.generator.engine_loop import EngineLoop


@pytest.fixture
def engine_loop():
    loop = EngineLoop.start("test-engine-loop")
    yield loop
    loop.stop()


async def test_a_call_runs_on_the_loop_and_returns(engine_loop):
    async def where() -> str:
        return threading.current_thread().name

    assert await engine_loop.call(where()) == "test-engine-loop"


async def test_fifty_calls_overlapping_a_stop_all_end_with_a_result_or_generation_error():
    engine_loop = EngineLoop.start("test-stop")
    started = asyncio.Event()
    caller = asyncio.get_running_loop()

    async def work(i: int) -> int:
        if i == 10:
            caller.call_soon_threadsafe(started.set)
        if i % 2:
            await asyncio.sleep(3600)  # long by construction: only a stop ends it
        return i

    async def submit_late(i: int) -> int:
        await started.wait()
        await asyncio.sleep(0)
        return await engine_loop.call(work(i))

    calls = [asyncio.create_task(engine_loop.call(work(i))) for i in range(25)]
    calls += [asyncio.create_task(submit_late(i)) for i in range(25, 50)]
    await started.wait()
    await asyncio.to_thread(engine_loop.stop)
    outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)
    assert len(outcomes) == 50
    for i, outcome in enumerate(outcomes):
        assert outcome == i or isinstance(outcome, GenerationError), (i, outcome)
    assert any(isinstance(o, GenerationError) for o in outcomes)
    with pytest.raises(GenerationError, match="no more requests"):
        await engine_loop.call(work(0))


async def test_a_call_submitted_between_the_cancel_pass_and_the_close_fails():
    engine_loop = EngineLoop.start("test-race")
    # What the loop's thread does once run_forever returns, with work already queued on it.
    engine_loop._loop.call_soon_threadsafe(engine_loop._loop.stop)
    engine_loop._thread.join(5)
    assert engine_loop.closed
    with pytest.raises(GenerationError):
        await asyncio.wait_for(engine_loop.call(asyncio.sleep(0)), 10)


async def test_a_stream_overlapping_a_stop_ends_with_a_generation_error():
    engine_loop = EngineLoop.start("test-stream-stop")

    async def forever():
        while True:
            yield "token"
            await asyncio.sleep(0.001)

    stream = engine_loop.stream(forever)
    assert await anext(stream) == "token"
    await asyncio.to_thread(engine_loop.stop)
    with pytest.raises(GenerationError, match="stopped"):
        async with asyncio.timeout(30):
            async for _ in stream:
                pass


async def test_a_call_past_its_timeout_fails_and_is_cancelled_on_the_loop(engine_loop):
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(GenerationError, match="limit"):
        await engine_loop.call(slow(), timeout=0.2)
    assert await asyncio.to_thread(cancelled.wait, 10)


async def test_a_slow_consumer_gets_fewer_larger_items_that_join_to_the_whole(engine_loop):
    made, first_taken = threading.Event(), threading.Event()
    pieces = [f"w{i} " for i in range(200)]

    async def produce():
        yield pieces[0]
        await asyncio.to_thread(first_taken.wait, 30)
        for piece in pieces[1:]:
            yield piece
        made.set()

    received: list[str] = []
    async for item in engine_loop.stream(produce, merge="".join):
        received.append(item)
        if len(received) == 1:  # fall behind: everything else is made meanwhile
            first_taken.set()
            await asyncio.to_thread(made.wait, 30)
    assert "".join(received) == "".join(pieces)
    assert len(received) < len(pieces) / 10
    assert len(received) >= 2


async def test_a_keeping_up_consumer_gets_items_as_they_come(engine_loop):
    go_on = threading.Event()

    async def produce():
        for i in range(5):
            yield str(i)
            await asyncio.to_thread(go_on.wait, 30)  # the next item waits for the consumer
            go_on.clear()

    received = []
    async for item in engine_loop.stream(produce, merge="".join):
        received.append(item)
        go_on.set()
    assert received == ["0", "1", "2", "3", "4"]


def test_merged_stream_chunks_keep_the_text_and_the_last_ones_ending():
    from rig_ray.generator.base import GeneratedChunk, Usage
    from rig_ray.generator.vllm_requests import merge_chunks

    last = GeneratedChunk(text="!", stop_reason="length", usage=Usage(output_tokens=3))
    merged = merge_chunks([GeneratedChunk(text="Hel"), GeneratedChunk(text="lo"), last])
    assert merged.text == "Hello!"
    assert merged.stop_reason == "length" and merged.usage == last.usage
    assert merge_chunks([GeneratedChunk(text="a"), GeneratedChunk(text="b")]).stop_reason is None
