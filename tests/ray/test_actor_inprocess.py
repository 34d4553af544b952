"""GeneratorActor's gate and error handling, driven in this process (no Ray cluster needed):
interleavings that a real actor makes rare are forced here step by step."""

from __future__ import annotations

import asyncio
import threading
import typing as t

from pydantic import PrivateAttr

import rig_ray as rr
from rig_ray.cluster.actor import GeneratorActor
from rig_ray.cluster.options import config_payload
from rig_ray.cluster.runtime import Gate, portable
from tests.ray.members import KeywordOnly, RaisesKeywordOnly


async def until(condition: t.Callable[[], bool], seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


class SlowLoad(rr.Generator):
    """Its load waits for `release`; its replies say whether it was loaded when it generated."""

    _loaded: bool = PrivateAttr(False)
    _release: threading.Event = PrivateAttr(default_factory=threading.Event)

    @property
    def is_loaded(self) -> bool:
        return self._loaded

    def load(self) -> t.Self:
        self._release.wait(30)
        self._loaded = True
        return self

    def unload(self) -> t.Self:
        self._loaded = False
        return self

    async def generate_texts(self, texts, params):
        text = "loaded" if self._loaded else "NOT LOADED"
        return [rr.GeneratedText(text=text) for _ in texts]


async def test_an_unload_between_the_first_load_and_the_batch_sends_it_round_again() -> None:
    actor = GeneratorActor(config_payload(SlowLoad(model="s")))
    generator = t.cast(SlowLoad, actor._generator)
    call = asyncio.ensure_future(actor.generate_texts(["x"], [rr.GenerateParams()]))
    await until(lambda: actor._gate._writer)  # the call's own load is running
    unload = asyncio.ensure_future(actor.unload())
    await until(lambda: actor._gate._writers_waiting == 1)  # the unload waits its turn
    generator._release.set()
    [result] = await asyncio.wait_for(call, 30)
    assert await asyncio.wait_for(unload, 30) is False
    assert t.cast(rr.GeneratedText, result).text == "loaded"


class NeverLoaded(rr.Generator):
    @property
    def is_loaded(self) -> bool:
        return False

    async def generate_texts(self, texts, params):
        return [rr.GeneratedText(text="ok") for _ in texts]


async def test_a_generator_that_never_reports_loaded_still_generates() -> None:
    actor = GeneratorActor(config_payload(NeverLoaded(model="n")))
    call = actor.generate_texts(["x"], [rr.GenerateParams()])
    [result] = await asyncio.wait_for(call, 30)
    assert t.cast(rr.GeneratedText, result).text == "ok"


async def test_a_cancelled_unload_stops_holding_back_new_batches() -> None:
    gate = Gate()
    running, release, second = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def batch(started: asyncio.Event, wait: asyncio.Event | None = None) -> None:
        async with gate.shared():
            started.set()
            if wait is not None:
                await wait.wait()

    async def unload() -> None:
        async with gate.exclusive():
            pass

    first = asyncio.ensure_future(batch(running, release))
    await running.wait()
    waiting_unload = asyncio.ensure_future(unload())
    await until(lambda: gate._writers_waiting == 1)
    held_back = asyncio.ensure_future(batch(second))
    await asyncio.sleep(0.05)
    assert not second.is_set()  # a waiting unload holds new batches back
    waiting_unload.cancel()
    await asyncio.wait_for(second.wait(), 10)  # and lets them go once it is cancelled
    release.set()
    await asyncio.gather(first, held_back)
    assert gate._writers_waiting == 0 and gate._readers == 0


async def test_errors_that_cannot_be_unpickled_become_generation_errors() -> None:
    [error] = portable([KeywordOnly("rate limited", status=429)])
    assert isinstance(error, rr.GenerationError)
    assert str(error) == "KeywordOnly: rate limited" and error.index == 0
    actor = GeneratorActor(config_payload(RaisesKeywordOnly(model="k")))
    try:
        await actor.generate_texts(["x"], [rr.GenerateParams()])
    except rr.GenerationError as raised:
        assert str(raised) == "KeywordOnly: rate limited"
    else:
        raise AssertionError("no error")


def test_a_remote_generator_built_without_remote_compares_by_identity() -> None:
    first, second = rr.RemoteGenerator(model="x"), rr.RemoteGenerator(model="x")
    assert first == first and first != second
    assert len({first, second}) == 2
