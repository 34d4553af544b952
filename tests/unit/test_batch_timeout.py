"""`batch_timeout_s` on an engine that runs one batch at a time (transformers): the clock
starts when the engine takes the batch, and a batch past its time frees the engine."""

from __future__ import annotations

import asyncio
import threading
import time
import typing as t
from pathlib import Path

import pyarrow as pa
import pytest

from rig_ray.batch.prompts import PromptSpec
from rig_ray.batch.stage import GenerateStage, StageConfig
from rig_ray.cluster.options import config_payload
from rig_ray.generator.base import GeneratedMessage, Usage
from rig_ray.generator.local import BATCH_STARTED, LocalGenerator, cancelled
from rig_ray.generator.params import GenerateParams
from rig_ray.message import Message


class OneAtATime(LocalGenerator):
    """Runs every batch on its engine thread; a batch about SLOW runs until its caller gives
    up on it (or for 30 s at most), then writes the file `stopped`."""

    stopped: str

    async def generate_messages(self, messages: t.Any, params: t.Any) -> t.Any:
        return await self._in_engine_thread(self._work, [m[-1].content for m in messages])

    def _work(self, texts: list[str]) -> list[GeneratedMessage]:
        if any("SLOW" in text for text in texts):
            deadline = time.monotonic() + 30
            while not cancelled() and time.monotonic() < deadline:
                time.sleep(0.01)
            if cancelled():
                Path(self.stopped).write_text("stopped")
        return [
            GeneratedMessage(
                message=Message(role="assistant", content=text),
                stop_reason="stop",
                usage=Usage(input_tokens=1, output_tokens=1),
            )
            for text in texts
        ]


def test_a_batch_waiting_behind_a_slow_one_is_not_timed_out_and_the_slow_one_stops(
    tmp_path: Path,
) -> None:
    stopped = tmp_path / "stopped"
    config = StageConfig(
        prompts=PromptSpec(template="$topic").resolve(["id", "topic"]),
        input_columns=("id", "topic"),
        batch_timeout_s=2.0,
    )
    stage = GenerateStage(config_payload(OneAtATime(model="one", stopped=str(stopped))), config)

    async def both() -> list[pa.Table]:
        slow = asyncio.ensure_future(stage(pa.table({"id": ["s"], "topic": ["SLOW"]})))
        await asyncio.sleep(0)  # the slow batch reaches the engine thread first
        fast = asyncio.ensure_future(stage(pa.table({"id": ["f"], "topic": ["fast"]})))
        return list(await asyncio.gather(slow, fast))

    slow, fast = asyncio.run(both())
    assert "batch_timeout_s=2" in slow.column("error")[0].as_py()
    assert fast.column("error")[0].as_py() is None  # it waited, then ran, in time
    assert fast.column("text")[0].as_py() == "fast"
    assert stopped.exists()  # the timed-out batch gave the engine thread back


def test_a_call_cancelled_while_it_waits_for_the_engine_thread_never_runs() -> None:
    ran: list[str] = []
    began = threading.Event()

    class Recording(LocalGenerator):
        def work(self, name: str, hold: threading.Event | None) -> None:
            ran.append(name)
            if hold is not None:
                began.set()
                hold.wait(30)

    async def scenario() -> None:
        generator = Recording(model="r")
        hold = threading.Event()
        first = asyncio.ensure_future(generator._in_engine_thread(generator.work, "first", hold))
        await asyncio.to_thread(began.wait, 30)  # the engine thread is busy with `first`
        second = asyncio.ensure_future(generator._in_engine_thread(generator.work, "second", None))
        await asyncio.sleep(0.05)
        second.cancel()
        hold.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await second
        await generator._in_engine_thread(generator.work, "third", None)

    asyncio.run(scenario())
    assert ran == ["first", "third"]


def test_transformers_stops_a_generation_its_caller_gave_up(
    tiny_llama_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rig_ray.generator.transformers_ import TransformersGenerator

    made: list[int] = []
    original = TransformersGenerator._generate_group

    def recording(self: t.Any, *args: t.Any) -> t.Any:
        outputs = original(self, *args)
        made.append(outputs[0].usage.output_tokens)
        return outputs

    monkeypatch.setattr(TransformersGenerator, "_generate_group", recording)
    generator = TransformersGenerator(model=str(tiny_llama_path), dtype="float32")
    generator.load()
    chat = [[Message(role="user", content="Count on and on.")]]

    async def scenario() -> None:
        running = asyncio.Event()
        token = BATCH_STARTED.set(running.set)
        long = asyncio.ensure_future(
            generator.generate_messages(chat, [GenerateParams(max_tokens=900, temperature=0)])
        )
        BATCH_STARTED.reset(token)
        await running.wait()
        long.cancel()
        short = await generator.generate_messages(chat, [GenerateParams(max_tokens=2)])
        assert isinstance(short[0], GeneratedMessage)

    try:
        asyncio.run(scenario())
    finally:
        generator.unload()
    # the given-up call stopped early (or, cancelled before its first token, made nothing)
    assert made[-1] <= 2 and len(made) <= 2 and all(count < 900 for count in made[:-1])


def test_serve_merger_a_request_past_its_timeout_frees_the_engine_thread(tmp_path: Path) -> None:
    from rig_ray.serve.batching import BatchMerger

    stopped = tmp_path / "stopped"
    generator = OneAtATime(model="one", stopped=str(stopped))

    async def call(items: list[str]) -> list[t.Any]:
        chats = [[Message(role="user", content=item)] for item in items]
        return list(await generator.generate_messages(chats, [GenerateParams()] * len(items)))

    async def scenario() -> list[t.Any]:
        merger: BatchMerger[str, t.Any] = BatchMerger(call, concurrency=2, max_items=1)
        slow = asyncio.ensure_future(asyncio.wait_for(merger.submit(["SLOW"]), 1.0))
        await asyncio.sleep(0)
        fast = asyncio.ensure_future(merger.submit(["fast"]))
        with pytest.raises(TimeoutError):
            await slow
        return await asyncio.wait_for(fast, 25)  # the slow call stopped: the engine is free

    (fast,) = asyncio.run(scenario())
    assert fast.message.content == "fast" and stopped.exists()
