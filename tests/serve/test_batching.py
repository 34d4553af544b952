"""BatchMerger: batches that wait for a busy engine go as one call (pure asyncio, no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from rig_ray.serve.batching import BatchMerger


class Engine:
    """Doubles each item, after `delay`; records each call's items and peak concurrency."""

    def __init__(self, delay: float = 0.05, fail_on: int | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.calls: list[list[int]] = []
        self.running = self.peak = 0

    async def run(self, items: list[int]) -> list[int]:
        self.calls.append(items)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.delay)
            if self.fail_on in items:
                raise RuntimeError("engine fault")
            return [item * 2 for item in items]
        finally:
            self.running -= 1


async def submit_all(merger: BatchMerger[int, int], batches: list[list[int]]) -> list[list[int]]:
    tasks = []
    for batch in batches:
        tasks.append(asyncio.create_task(merger.submit(batch)))
        await asyncio.sleep(0)  # in order of arrival
    return list(await asyncio.gather(*tasks))


async def test_batches_waiting_for_the_engine_merge_into_one_call() -> None:
    engine = Engine()
    merger = BatchMerger(engine.run, max_items=32)
    results = await submit_all(merger, [[1], [2, 3], [4], [5, 6]])
    assert results == [[2], [4, 6], [8], [10, 12]]
    assert engine.calls == [[1], [2, 3, 4, 5, 6]]  # the first ran alone; the rest waited
    assert engine.peak == 1


async def test_max_items_caps_a_merged_call() -> None:
    engine = Engine()
    merger = BatchMerger(engine.run, max_items=3)
    await submit_all(merger, [[1], [2, 3], [4], [5, 6, 7, 8], [9]])
    assert engine.calls == [[1], [2, 3, 4], [5, 6, 7, 8], [9]]  # an oversized batch runs whole


async def test_concurrency_runs_several_calls_at_once() -> None:
    engine = Engine()
    merger = BatchMerger(engine.run, concurrency=2)
    await submit_all(merger, [[1], [2], [3], [4]])
    assert engine.calls == [[1], [2], [3, 4]] and engine.peak == 2


async def test_a_failed_call_fails_its_batches_only() -> None:
    engine = Engine(fail_on=3)
    merger = BatchMerger(engine.run)
    first = asyncio.create_task(merger.submit([1]))
    await asyncio.sleep(0)
    failing = [asyncio.create_task(merger.submit(batch)) for batch in ([2], [3])]
    assert await first == [2]
    for task in failing:
        with pytest.raises(RuntimeError, match="engine fault"):
            await task
    assert await merger.submit([4]) == [8]  # the merger goes on


async def test_a_caller_that_leaves_does_not_disturb_the_others() -> None:
    engine = Engine()
    merger = BatchMerger(engine.run)
    first = asyncio.create_task(merger.submit([1]))
    await asyncio.sleep(0)
    leaving = asyncio.create_task(merger.submit([2]))
    staying = asyncio.create_task(merger.submit([3]))
    await asyncio.sleep(0)
    leaving.cancel()
    assert await first == [2] and await staying == [6]
    assert leaving.cancelled()


async def test_a_request_that_finds_the_engine_idle_waits_for_others() -> None:
    engine = Engine()
    merger = BatchMerger(engine.run, wait_s=0.2)
    first = asyncio.create_task(merger.submit([1]))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(merger.submit([2]))
    assert (await first, await second) == ([2], [4])
    assert engine.calls == [[1, 2]]


async def test_a_full_batch_does_not_wait() -> None:
    engine = Engine()
    merger = BatchMerger(engine.run, wait_s=10, max_items=2)
    assert await asyncio.wait_for(merger.submit([1, 2]), timeout=1) == [2, 4]


class Hanging:
    """An engine whose calls with 0 in them never end (unless cancelled)."""

    def __init__(self) -> None:
        self.cancelled = 0

    async def run(self, items: list[int]) -> list[int]:
        if 0 in items:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return items


async def test_a_call_whose_callers_all_left_is_cancelled_and_frees_the_engine() -> None:
    engine = Hanging()
    merger = BatchMerger(engine.run)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(merger.submit([0]), timeout=0.1)
    assert await asyncio.wait_for(merger.submit([5]), timeout=1) == [5]
    assert engine.cancelled == 1
