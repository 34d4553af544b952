"""LLMPool logic on in-process fakes: validation, split, merge order, failures, lifecycle."""

from __future__ import annotations

import time
import typing as t

import pytest

import rig_ray as rr
from tests.fakes import EchoGenerator, FailingGenerator, FixedGenerator
from tests.ray.members import Boom, Loadable, Sleepy


def fixed(*texts: str) -> list[rr.Generator]:
    return [FixedGenerator(model=f"m{text}", text=text) for text in texts]


@pytest.mark.parametrize("members", [[], fixed("a"), [FixedGenerator(model="x"), "gpt-4o"]])
def test_pool_needs_two_generators(members: list[t.Any]) -> None:
    with pytest.raises(rr.InvalidPoolError, match=r"two generators|not a Generator"):
        rr.LLMPool(members)


def test_pool_of_one_generator_object_says_to_pass_a_list() -> None:
    with pytest.raises(rr.InvalidPoolError, match=r"LLMPool\(\[g1, g2\]\)"):
        rr.LLMPool(FixedGenerator(model="x"))  # type: ignore[arg-type]


@pytest.mark.parametrize("num_generations", [1, 2, 3, 4, 5, 7])
def test_generations_merge_in_member_order(num_generations: int) -> None:
    members = fixed("A", "B", "C")
    pool = rr.LLMPool(members, seed=3)
    shares = rr.LLMPool(fixed("A", "B", "C"), seed=3).generations_per_member(num_generations)
    results = pool.generate(["p", "q"], num_generations)
    expected = [text for text, share in zip("ABC", shares, strict=True) for _ in range(share)]
    assert [[r.text for r in per_input] for per_input in results] == [expected, expected]
    for member, share in zip(members, shares, strict=True):
        assert t.cast(FixedGenerator, member).calls == ([2 * share] if share else [])


def test_only_members_with_a_share_are_called_with_the_whole_batch() -> None:
    members = fixed("A", "B", "C", "D")
    pool = rr.LLMPool(members, seed=0)
    pool.generate(["1", "2", "3"], 1)
    calls = [t.cast(FixedGenerator, member).calls for member in members]
    assert sorted(calls) == [[], [], [], [3]]


def test_equal_members_still_each_get_their_share() -> None:
    members = [EchoGenerator(model="same"), EchoGenerator(model="same")]
    results = rr.LLMPool(members).generate(["x"], 4)
    assert [r.text for r in results[0]] == ["x"] * 4
    assert [t.cast(EchoGenerator, m).calls for m in members] == [[2], [2]]


def test_chat_inputs_and_progress() -> None:
    pool = rr.LLMPool([EchoGenerator(model="a"), FixedGenerator(model="b", text="B")], seed=1)
    advances: list[int] = []
    chats = [[{"role": "user", "content": "hi"}], [rr.Message(role="user", content="yo")]]
    results = pool.generate(chats, 3, progress_callback=lambda advance: advances.append(advance))
    assert all(isinstance(r, rr.GeneratedMessage) for per in results for r in per)
    assert [len(per) for per in results] == [3, 3]
    assert sum(advances) == 6 and len(advances) == 2


def test_bad_inputs_fail_before_any_member_runs() -> None:
    members = fixed("A", "B")
    with pytest.raises(rr.InvalidMessageError):
        rr.LLMPool(members).generate(["text", [{"role": "user", "content": "chat"}]])
    assert [t.cast(FixedGenerator, m).calls for m in members] == [[], []]


def test_failing_member_is_named(fake_providers: None) -> None:
    pool = rr.LLMPool([EchoGenerator(model="ok"), FailingGenerator(model="bad")])
    with pytest.raises(rr.PoolMemberError) as info:
        pool.generate(["fine", "please FAIL"], 2)
    assert info.value.identifier == "failing!bad"
    assert "for input 1" in info.value.cause and "refused" in info.value.cause
    assert "failing!bad" in str(info.value)


async def test_a_failure_is_raised_at_once_and_cancels_the_others() -> None:
    sleepy = Sleepy(model="slow")
    pool = rr.LLMPool([sleepy, Boom(model="boom")])
    started = time.perf_counter()
    with pytest.raises(rr.PoolMemberError, match="engine on fire") as info:
        await pool.agenerate(["x"], 2)
    assert time.perf_counter() - started < 5
    assert info.value.identifier == "Boom(model='boom')"
    assert sleepy._cancelled == [True]


def test_lifecycle_reaches_every_member() -> None:
    members = [Loadable(model="a"), Loadable(model="b")]
    pool = rr.LLMPool(members)
    pool.load()
    assert all(m.is_loaded for m in members)
    pool.unload()
    assert not any(m.is_loaded for m in members)
    pool.load().teardown()
    assert not any(m.is_loaded for m in members)
    assert repr(pool).startswith("LLMPool([")


class CannotUnload(FixedGenerator):
    def unload(self) -> t.Self:
        raise RuntimeError("stuck")


def test_teardown_reaches_every_member_after_a_failure() -> None:
    members = [CannotUnload(model="stuck"), Loadable(model="b").load()]
    with pytest.raises(rr.PoolMemberError, match="stuck") as info:
        rr.LLMPool(members).teardown()
    assert info.value.identifier == "CannotUnload(model='stuck')"
    assert not members[1].is_loaded
