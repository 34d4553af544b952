"""Real transformers engines in Ray actors: two models in one pool, load/unload memory in the
actor, and a killed actor that reloads and answers."""

from __future__ import annotations

import typing as t
from pathlib import Path

import psutil
import pytest

import rig_ray as rr
from tests.ray.members import wait_for_restart

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("local_ray")]
CPU = 0.5
MiB = 1 << 20


def identifier(path: Path) -> str:
    return f"transformers!{path},max_tokens=8,temperature=0,device=cpu"


@pytest.fixture
def start() -> t.Iterator[t.Callable[..., rr.RemoteGenerator]]:
    started: list[rr.RemoteGenerator] = []

    def start(generator: rr.Generator | str) -> rr.RemoteGenerator:
        remote = rr.remote(generator, num_cpus=CPU)
        started.append(remote)
        return remote

    yield start
    for remote in started:
        remote.teardown()


@pytest.mark.slow
def test_two_different_models_in_one_pool(start, tiny_llama_path, other_tiny_llama_path) -> None:
    first, second = start(identifier(tiny_llama_path)), start(identifier(other_tiny_llama_path))
    pool = rr.LLMPool([first, second], seed=5)
    pool.load()
    assert first.is_loaded and second.is_loaded
    [[alone_first]], [[alone_second]] = (m.generate(["Once upon a time"]) for m in (first, second))
    assert alone_first.text != alone_second.text  # different weights, greedy decoding
    shares = rr.LLMPool([first, second], seed=5).generations_per_member(3)
    results = pool.generate(["Once upon a time", "Hello"], 3)
    assert [len(per_input) for per_input in results] == [3, 3]
    expected = [alone_first.text] * shares[0] + [alone_second.text] * shares[1]
    assert [r.text for r in results[0]] == expected
    assert all(r.usage.output_tokens <= 8 for per in results for r in per)

    chats = [[{"role": "user", "content": "What is the capital of France?"}]]
    [replies] = pool.generate(chats, 2)
    assert [type(r) for r in replies] == [rr.GeneratedMessage] * 2
    assert all(r.message.role == "assistant" for r in replies)
    pool.unload()
    assert not first.is_loaded and not second.is_loaded


def actor_rss(remote: rr.RemoteGenerator) -> int:
    info = remote.info()
    rss = psutil.Process(info["pid"]).memory_info().rss
    assert abs(rss - info["rss_bytes"]) < 64 * MiB  # the actor's own reading agrees
    return int(rss)


def test_unload_gives_the_memory_back_in_the_actor(start, smollm2_path) -> None:
    remote = start(identifier(smollm2_path))  # 135M parameters: about 270 MB in bf16
    for _ in range(2):  # load, generate (which touches every weight), unload; twice
        assert remote.load().is_loaded
        [[reply]] = remote.generate(["The capital of France is"])
        assert reply.usage.output_tokens >= 1
        loaded = actor_rss(remote)
        unloaded = actor_rss(remote.unload())
        assert not remote.is_loaded
        assert loaded - unloaded > 150 * MiB, (loaded, unloaded)
    assert remote.generate(["Paris is"]) and remote.is_loaded  # loads again on its own


@pytest.mark.slow  # the restart itself is the fakes' test (tests/ray/test_remote.py)
def test_killed_engine_actor_reloads_and_answers(start, local_ray, tiny_llama_path) -> None:
    remote = start(identifier(tiny_llama_path))
    [[before]] = remote.generate(["Hello there"])
    pid = remote.info()["pid"]
    local_ray.kill(remote.actor, no_restart=False)
    assert not wait_for_restart(remote, pid)["loaded"]
    [[after]] = remote.generate(["Hello there"])
    assert after.text == before.text and remote.is_loaded
