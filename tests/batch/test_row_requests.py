"""A batch actor in front of a continuously batching engine sends each row as its own request,
at most `row_requests` (or 1.1 x the engine's capacity) at once across all its batches, so a
row that is still generating holds only its own slot. No Ray: the stage is driven directly."""

from __future__ import annotations

import asyncio
import typing as t

import pyarrow as pa
import pytest
from pydantic import PrivateAttr

from rig_ray.batch import stage as stage_module
from rig_ray.batch.prompts import PromptSpec
from rig_ray.batch.stage import GenerateStage, StageConfig
from rig_ray.generator.base import GeneratedMessage
from rig_ray.generator.params import GenerateParams
from tests.fakes import FixedGenerator


class Held(FixedGenerator):
    """Replies at once, except to a prompt that says "slow", which waits for `release`; a
    call with a prompt that says "bad" fails as a whole."""

    batches_continuously: t.ClassVar[bool] = True
    engine_capacity: int | None = None
    _release: asyncio.Event = PrivateAttr(default_factory=asyncio.Event)
    _active: int = PrivateAttr(0)
    _peak: int = PrivateAttr(0)

    async def capacity(self) -> int | None:
        return self.engine_capacity

    async def generate_messages(self, messages, params) -> list[GeneratedMessage | BaseException]:
        self._active += 1
        self._peak = max(self._peak, self._active)
        try:
            if any("slow" in conversation[-1].content for conversation in messages):
                await self._release.wait()
            if any("bad" in conversation[-1].content for conversation in messages):
                raise RuntimeError("engine said no")
            await asyncio.sleep(0)
            return await super().generate_messages(messages, params)
        finally:
            self._active -= 1


def make_stage(monkeypatch, generator: Held, row_requests: int | None) -> GenerateStage:
    monkeypatch.setattr(stage_module, "restore_payload", lambda payload: generator)
    config = StageConfig(
        prompts=PromptSpec(template="$topic").resolve(("id", "topic")),
        input_columns=("id", "topic"),
        params=GenerateParams(max_tokens=4),
        row_requests=row_requests,
    )
    return GenerateStage(b"", config)


def batch(*topics: str) -> pa.Table:
    return pa.table({"id": [f"id-{topic}" for topic in topics], "topic": list(topics)})


async def test_a_slow_row_holds_only_its_own_slot(monkeypatch) -> None:
    generator = Held(model="held")
    stage = make_stage(monkeypatch, generator, row_requests=3)
    first = asyncio.create_task(stage(batch("slow", "a", "b", "c")))
    second = await asyncio.wait_for(stage(batch("d", "e", "f", "g")), 10)
    assert second.column("text").to_pylist() == ["fixed"] * 4  # done while "slow" runs on
    assert not first.done()
    generator._release.set()
    done = await asyncio.wait_for(first, 10)
    assert done.column("error").to_pylist() == [None] * 4
    assert set(generator.calls) == {1}  # one row per engine call
    assert generator._peak == 3  # never more than the slots


async def test_the_slots_follow_the_loaded_engines_capacity(monkeypatch) -> None:
    generator = Held(model="held", engine_capacity=4)  # 1.1 x 4 -> 5 slots
    stage = make_stage(monkeypatch, generator, row_requests=100)
    rows = [f"slow {n}" for n in range(8)]
    running = asyncio.create_task(stage(batch(*rows)))
    for _ in range(100):
        await asyncio.sleep(0.01)
    assert generator._active == 5
    generator._release.set()
    assert (await asyncio.wait_for(running, 10)).num_rows == 8


async def test_without_row_requests_a_batch_is_one_call(monkeypatch) -> None:
    generator = Held(model="held")
    stage = make_stage(monkeypatch, generator, row_requests=None)
    await stage(batch("a", "b", "c"))
    assert generator.calls == [3]


@pytest.mark.parametrize("row_requests", [None, 2])
async def test_a_failing_call_fails_its_rows_only(monkeypatch, row_requests) -> None:
    generator = Held(model="held")
    stage = make_stage(monkeypatch, generator, row_requests=row_requests)
    errors = (await stage(batch("bad", "fine"))).column("error").to_pylist()
    if row_requests is None:
        assert all(e and "engine said no" in e for e in errors)
    else:
        assert "engine said no" in errors[0] and errors[1] is None


class Paced(Held):
    """As Held; a prompt that says "steady" takes `steady_s` (on the engine, by construction)."""

    steady_s: float = 0.0

    async def generate_messages(self, messages, params) -> list[GeneratedMessage | BaseException]:
        if any("steady" in conversation[-1].content for conversation in messages):
            await asyncio.sleep(self.steady_s)
        return await super().generate_messages(messages, params)


async def test_a_rows_timeout_counts_from_its_slot_not_while_it_waits(monkeypatch) -> None:
    """One slot, batch_timeout_s=T: a row holds it for 0.5 T, the next waits that long and
    then takes 0.8 T. Each is within T on the engine, so neither times out, though the second
    ends 1.3 T after its batch began; a row on the engine past T does."""
    timeout = 4.0
    generator = Paced(model="held", steady_s=0.8 * timeout)
    monkeypatch.setattr(stage_module, "restore_payload", lambda payload: generator)
    config = StageConfig(
        prompts=PromptSpec(template="$topic").resolve(("id", "topic")),
        input_columns=("id", "topic"),
        row_requests=1,
        batch_timeout_s=timeout,
    )
    stage = GenerateStage(b"", config)
    first = asyncio.create_task(stage(batch("slow")))
    second = asyncio.create_task(stage(batch("steady")))
    await asyncio.sleep(0.5 * timeout)
    generator._release.set()
    done = await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert [table.column("error").to_pylist() for table in done] == [[None], [None]]
    generator._release.clear()
    short = GenerateStage(b"", config.model_copy(update={"batch_timeout_s": 0.5}))
    [error] = (await short(batch("slow"))).column("error").to_pylist()  # never released
    assert "the row took longer than batch_timeout_s=0.5 on the engine" in error
