"""RemoteGenerator on a real local Ray, with fake generators: shipping, lifecycle, futures,
restarts, failures and pools of remote members."""

from __future__ import annotations

import asyncio
import math
import os
import pickle
import sys
import threading
import time
import types
import typing as t
import uuid
import warnings
from pathlib import Path

import pytest
from pydantic import PrivateAttr

import rig_ray as rr
from rig_ray.generator.local import LocalGenerator
from tests.fakes import EchoGenerator, FixedGenerator
from tests.fresh_process import niceness_in_a_fresh_process
from tests.ray.members import (
    Boom,
    Continuous,
    Loadable,
    RaisesKeywordOnly,
    Sleepy,
    Trickle,
    wait_for_restart,
)

pytestmark = pytest.mark.usefixtures("local_ray")
CPU = 0.5  # four actors fit in ray.init(num_cpus=2)


@pytest.fixture
def start() -> t.Iterator[t.Callable[..., rr.RemoteGenerator]]:
    """`rr.remote` with a fraction of a CPU; every actor started is torn down after the test."""
    started: list[rr.RemoteGenerator] = []

    def start(generator: rr.Generator | str, **options: t.Any) -> rr.RemoteGenerator:
        options.setdefault("num_cpus", CPU)
        remote = rr.remote(generator, **options)
        started.append(remote)
        return remote

    yield start
    for remote in started:
        remote.teardown()


class Delegate(rr.Generator):
    """Builds `target` from its identifier inside whatever process runs it, and echoes that."""

    target: str

    async def generate_texts(self, texts, params):
        inner = rr.get_generator(self.target)
        results = await inner.generate_texts(texts, params)
        return [
            rr.GeneratedText(text=f"{inner.to_identifier()}:{r.text}", stop_reason="stop")
            for r in results
        ]


class DieOnce(rr.Generator):
    """Kills its own process on the first call (leaving a marker file); answers afterwards."""

    marker: str

    async def generate_texts(self, texts, params):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return [rr.GeneratedText(text=f"survived {text}") for text in texts]


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


class ReturnsOddErrors(rr.Generator):
    async def generate_texts(self, texts, params):
        return [Unpicklable() for _ in texts]


class HeavyHere(LocalGenerator):
    """A local generator whose 'engine' is a marker object."""

    _engine: object | None = PrivateAttr(None)

    @property
    def is_loaded(self) -> bool:
        return self._engine is not None

    def load(self) -> t.Self:
        self._engine = object()
        return self

    async def generate_texts(self, texts, params):
        return [rr.GeneratedText(text=f"loaded={self.is_loaded}") for _ in texts]


class Sharded(FixedGenerator):
    tensor_parallel_size: int = 2


def ghost_module() -> types.ModuleType:
    """A module that exists only in this process: actors cannot import it."""
    module = types.ModuleType(f"ghost_{uuid.uuid4().hex}")
    sys.modules[module.__name__] = module
    source = (
        "import rig_ray as rr\n"
        "class Shout(rr.Generator):\n"
        "    exclaim: int = 1\n"
        "    async def generate_texts(self, texts, params):\n"
        "        return [rr.GeneratedText(text=x.upper() + '!' * self.exclaim) for x in texts]\n"
    )
    exec(source, module.__dict__)
    return module


def texts(results: list[list[t.Any]]) -> list[list[str]]:
    return [[r.text for r in per_input] for per_input in results]


def test_remote_takes_an_identifier_and_keeps_it(start, fake_providers) -> None:
    remote = start("echo!e,temperature=0.5")
    assert isinstance(remote, rr.Generator)
    assert remote.to_identifier() == "echo!e,temperature=0.5"
    assert repr(remote) == "RemoteGenerator('echo!e,temperature=0.5')"
    assert texts(remote.generate(["a", "b"], 2)) == [["a", "a"], ["b", "b"]]
    with pytest.raises(rr.InvalidGeneratorError, match="already runs in an actor"):
        rr.remote(remote)
    assert remote.model_copy() == remote
    with pytest.raises(rr.InvalidGeneratorError, match="fixed in its actor"):
        remote.model_copy(update={"model": "other"})


def test_custom_class_and_driver_providers_work_in_the_actor(start, fake_providers) -> None:
    ghost = ghost_module()
    rr.register_generator("shout", ghost.Shout)
    shout = start(ghost.Shout(model="any", exclaim=2))
    assert texts(shout.generate(["hi"])) == [["HI!!"]]
    delegate = start(Delegate(model="d", target="shout!any,exclaim=3"))
    assert texts(delegate.generate(["yo"])) == [["shout!any,exclaim=3:YO!!!"]]
    assert shout.info()["pid"] != os.getpid()


def test_submit_returns_object_refs(start, local_ray, fake_providers) -> None:
    remote = start(FixedGenerator(model="f", text="F"))
    ref = remote.submit(["a"], 3)
    assert isinstance(ref, local_ray.ObjectRef)
    assert texts(local_ray.get(ref)) == [["F", "F", "F"]]
    failing = start("failing!f")
    with pytest.raises(rr.GenerationError, match="for input 0"):
        local_ray.get(failing.submit(["FAIL"]))


async def test_chat_and_async_calls(start) -> None:
    remote = start(EchoGenerator(model="e"))
    chats = [[rr.Message(role="user", content="hello")], [{"role": "user", "content": "bye"}]]
    results = await remote.agenerate(chats, 2)
    assert texts(results) == [["hello"] * 2, ["bye"] * 2]
    assert all(isinstance(r, rr.GeneratedMessage) for per in results for r in per)
    with pytest.raises(rr.RigRayError, match="agenerate"):
        remote.generate(["x"])


def test_remote_generator_pickles_with_its_actor(start, local_ray) -> None:
    remote = start(EchoGenerator(model="e"))
    copy = pickle.loads(pickle.dumps(remote))
    assert copy == remote and copy.info()["pid"] == remote.info()["pid"]

    @local_ray.remote(num_cpus=CPU)
    def use(generator: rr.Generator) -> list[list[str]]:
        return texts(generator.generate(["from a task"]))

    assert local_ray.get(use.remote(remote)) == [["from a task"]]


async def test_load_unload_and_loading_on_first_generation(start) -> None:
    remote = start(Loadable(model="l", text="L"))
    assert not remote.is_loaded
    assert texts(await remote.agenerate(["x"])) == [["L"]]
    assert remote.is_loaded
    await remote.aunload()
    assert not remote.is_loaded
    await remote.aload()
    assert remote.is_loaded


def test_sync_load_unload(start) -> None:
    remote = start(Loadable(model="l"))
    assert remote.load().is_loaded
    assert not remote.unload().is_loaded


def test_actor_that_dies_mid_call_is_restarted_and_the_call_retried(start, tmp_path) -> None:
    remote = start(DieOnce(model="d", marker=str(tmp_path / "died")))
    first_pid = remote.info()["pid"]
    assert texts(remote.generate(["x"])) == [["survived x"]]
    assert int((tmp_path / "died").read_text()) == first_pid
    assert remote.info()["pid"] != first_pid


def test_killed_actor_restarts_unloaded_and_loads_on_next_call(start, local_ray) -> None:
    remote = start(Loadable(model="l", text="L"))
    pid = remote.load().info()["pid"]
    local_ray.kill(remote.actor, no_restart=False)
    assert not wait_for_restart(remote, pid)["loaded"]
    assert texts(remote.generate(["x"])) == [["L"]]
    assert remote.info()["loaded"]


def test_dead_or_torn_down_actor_names_the_generator(start, local_ray, fake_providers) -> None:
    remote = start("echo!gone", max_restarts=0)
    local_ray.kill(remote.actor, no_restart=True)
    with pytest.raises(rr.PoolMemberError, match="its actor died") as info:
        for _ in range(300):  # until the kill has landed
            remote.generate(["x"])
            time.sleep(0.1)
    assert info.value.identifier == "echo!gone"
    remote.teardown()
    with pytest.raises(rr.PoolMemberError, match="torn down"):
        remote.generate(["x"])


async def test_batch_errors_come_back_as_they_were_raised(start) -> None:
    with pytest.raises(RuntimeError, match="engine on fire"):
        await start(Boom(model="b")).generate_texts(["x"], [rr.GenerateParams()])
    [odd] = await start(ReturnsOddErrors(model="o")).generate_texts(["x"], [rr.GenerateParams()])
    assert isinstance(odd, rr.GenerationError) and "Unpicklable: holds a lock" in str(odd)
    with pytest.raises(rr.GenerationError, match="KeywordOnly: rate limited"):  # not unpicklable
        await start(RaisesKeywordOnly(model="k")).generate_texts(["x"], [rr.GenerateParams()])


def test_a_generator_loaded_here_warns_and_the_actor_loads_its_own(start) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idle = start(HeavyHere(model="idle"))  # not loaded: no warning
    with pytest.warns(RuntimeWarning, match="loaded in this process"):
        remote = start(HeavyHere(model="h").load())
    assert not remote.info()["loaded"]  # the engine was not shipped
    assert texts(remote.generate(["x"])) == [["loaded=True"]]
    assert not idle.is_loaded


def test_a_failed_start_gives_its_placement_group_back(start, local_ray, monkeypatch) -> None:
    from rig_ray.cluster import actor

    # This Ray has no GPU: let the group be made (it waits for GPUs) rather than refused.
    monkeypatch.setattr(actor, "refuse_what_no_node_holds", lambda placement: None)
    name = f"taken-{uuid.uuid4().hex}"
    start(FixedGenerator(model="n"), name=name)
    before = set(local_ray.util.placement_group_table())
    with pytest.raises(ValueError, match=name):
        rr.remote(Sharded(model="s"), num_cpus=CPU, name=name)
    groups = local_ray.util.placement_group_table()
    new = [group for key, group in groups.items() if key not in before]
    assert len(new) == 1 and new[0]["state"] == "REMOVED"


def test_pool_of_remote_members_merges_in_member_order(start) -> None:
    members = [start(FixedGenerator(model=m, text=m)) for m in ("A", "B")]
    pool = rr.LLMPool(members, seed=11)
    shares = rr.LLMPool(members, seed=11).generations_per_member(3)
    expected = ["A"] * shares[0] + ["B"] * shares[1]
    assert texts(pool.generate(["p", "q"], 3)) == [expected, expected]
    pool.unload()
    pool.load()


def test_pool_with_a_failing_remote_member_fails_promptly(start, fake_providers) -> None:
    slow, boom = start(Sleepy(model="slow", seconds=60)), start(Boom(model="boom"))
    slow.info(), boom.info()  # both actors are up: the timing below is the failure path alone
    started = time.perf_counter()
    with pytest.raises(rr.PoolMemberError, match="engine on fire") as info:
        rr.LLMPool([slow, boom]).generate(["x"], 2)
    assert time.perf_counter() - started < 10
    assert info.value.identifier == "Boom(model='boom')"
    pool = rr.LLMPool([start("echo!ok"), start("failing!bad")])
    with pytest.raises(rr.PoolMemberError) as info:
        pool.generate(["FAIL"], 2)
    assert info.value.identifier == "failing!bad"
    pool.teardown()


async def test_chat_and_completion_pipelines_run_on_a_remote_generator(start) -> None:
    remote = start(EchoGenerator(model="e"))
    chats = await remote.chat("same words back").run_many(2)
    assert [chat.last.content for chat in chats] == ["same words back"] * 2
    completion = await remote.complete("echo me").run()
    assert completion.generated == "echo me"


async def test_a_remote_stream_arrives_chunk_by_chunk(start):
    remote = start(Trickle(model="t", pause=0.3))
    await remote.aload()
    arrivals: list[float] = []
    chunks: list[rr.GeneratedChunk] = []
    started = time.monotonic()
    async for chunk in remote.stream_text("hello"):
        arrivals.append(time.monotonic() - started)
        chunks.append(chunk)
    assert "".join(c.text for c in chunks) == "hello one two three"
    assert chunks[-1].stop_reason == "stop" and chunks[-1].usage.output_tokens == 4
    assert arrivals[0] < arrivals[-1] - 0.6  # not all at once at the end


async def test_a_remote_stream_raises_the_actors_error_and_stops_when_left(start, tmp_path):
    failing = start(Trickle(model="t", fail_after=2))
    chunks = []
    with pytest.raises(rr.GenerationError, match="failed after 2 words"):
        async for chunk in failing.stream_text("x"):
            chunks.append(chunk.text)
    assert chunks == ["x", " one"]
    marker = tmp_path / "stopped"
    slow = start(Trickle(model="t", pause=1.0, stopped_file=str(marker)))
    stream = slow.stream_text("y")
    assert (await anext(stream)).text == "y"
    await stream.aclose()
    deadline = time.monotonic() + 20
    while not marker.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert marker.exists(), "leaving the stream stops it in the actor"


class Sized(FixedGenerator):
    """Reports the capacity of an engine that runs 42 requests at once."""

    async def capacity(self) -> int | None:
        return 42


async def test_capacity_is_asked_of_the_actor(start) -> None:
    assert await start(Sized(model="sized")).capacity() == 42
    assert await start(FixedGenerator(model="plain")).capacity() is None


def test_a_batch_keeps_an_actors_continuous_engine_full(start) -> None:
    """A pipeline stage's engines are actors: the batch driver asks each how many sequences
    its engine runs, and keeps about twice 1.1x that many rows in flight, a call per batch."""
    from rig_ray.batch import concurrency

    full = start(Continuous(model="c", text="C", seqs=300))
    per_call = start(FixedGenerator(model="f", text="F"))
    [engine, other] = concurrency.plan([full, per_call], None, None, num_generations=2)
    assert engine == concurrency.Concurrency(64, 2 * math.ceil(330 / 64), None)
    assert other == concurrency.Concurrency(64, concurrency.DEFAULT_MAX_CONCURRENT_BATCHES, None)
    [half, _] = concurrency.plan([full, per_call], None, None)  # half the rows' generations
    assert half == concurrency.Concurrency(64, 2 * math.ceil(330 / 32), None)


_REMOTE_NICENESS = """
import os
import rig_ray as rr
from tests.fakes import CallbackGenerator
from tests.ray.members import niceness

remote = rr.remote(CallbackGenerator(model="nice", callback=niceness), num_cpus=0)
print("niceness", os.nice(0), remote.generate(["x"])[0][0].text, flush=True)
"""


def test_a_ray_that_remote_starts_runs_its_actor_at_the_callers_niceness() -> None:
    """As `ray.init()` would, but not 15 steps nicer than the caller, Ray's default (in a
    process of its own, with no Ray to join: this one's runs already)."""
    caller, actor = niceness_in_a_fresh_process(_REMOTE_NICENESS)
    assert actor == caller
