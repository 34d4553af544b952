"""The split rule (pure) and `Generator.generate` on in-process fakes: no Ray needed."""

from __future__ import annotations

import random

import pytest

import rig_ray as rr
from rig_ray.cluster import generations_per_member
from tests.fakes import EchoGenerator, FailingGenerator


@pytest.mark.parametrize(
    ("num_generations", "members"),
    [(1, 2), (2, 2), (3, 2), (1, 3), (2, 3), (3, 3), (7, 3), (10, 4), (5, 7), (100, 6)],
)
def test_split_shapes(num_generations: int, members: int) -> None:
    rng = random.Random(0)
    for _ in range(50):
        shares = generations_per_member(num_generations, members, rng)
        base, extra = divmod(num_generations, members)
        assert len(shares) == members
        assert sum(shares) == num_generations
        assert sorted(set(shares)) <= [base, base + 1]
        assert shares.count(base + 1) == extra


def chi_square(counts: list[int], expected: float) -> float:
    return sum((count - expected) ** 2 / expected for count in counts)


@pytest.mark.parametrize(("num_generations", "members"), [(1, 3), (5, 3), (2, 5), (3, 4)])
def test_remainder_goes_to_every_member_equally_often(num_generations: int, members: int) -> None:
    rng = random.Random(1234)
    draws = 6000
    extras = [0] * members
    base = num_generations // members
    for _ in range(draws):
        for index, share in enumerate(generations_per_member(num_generations, members, rng)):
            extras[index] += share - base
    expected = draws * (num_generations % members) / members
    # 99.9% quantile of chi-square with up to 4 degrees of freedom is 18.5
    assert chi_square(extras, expected) < 18.5, extras


def test_same_seed_same_sequence_of_draws() -> None:
    members = [EchoGenerator(model="a"), EchoGenerator(model="b"), EchoGenerator(model="c")]
    first, second, other = (rr.LLMPool(members, seed=seed) for seed in (7, 7, 8))
    sequence = [first.generations_per_member(n) for n in range(1, 30)]
    assert sequence == [second.generations_per_member(n) for n in range(1, 30)]
    assert sequence != [other.generations_per_member(n) for n in range(1, 30)]


@pytest.mark.parametrize(("num_generations", "members"), [(0, 2), (-1, 2), (2, 0), (True, 2)])
def test_split_rejects_bad_counts(num_generations: int, members: int) -> None:
    with pytest.raises(rr.RigRayError):
        generations_per_member(num_generations, members, random.Random())


def test_generate_texts_one_call_with_each_input_repeated() -> None:
    generator = EchoGenerator(model="echo")
    advances: list[int] = []
    results = generator.generate(
        ["a", "b"], 3, progress_callback=lambda advance: advances.append(advance)
    )
    assert generator.calls == [6]
    assert [[r.text for r in per_input] for per_input in results] == [["a"] * 3, ["b"] * 3]
    assert all(isinstance(r, rr.GeneratedText) for per_input in results for r in per_input)
    assert advances == [6]


def test_generate_chat_inputs_in_every_shape() -> None:
    generator = EchoGenerator(model="echo")
    chats = [
        [{"role": "user", "content": "dict"}],
        [rr.Message(role="system", content="s"), rr.Message(role="user", content="message")],
    ]
    results = generator.generate(chats, 2)
    assert generator.calls == [4]
    assert [[r.text for r in per_input] for per_input in results] == [["dict"] * 2, ["message"] * 2]
    assert all(isinstance(r, rr.GeneratedMessage) for per_input in results for r in per_input)


def test_generate_passes_params_and_handles_empty_input() -> None:
    generator = EchoGenerator(model="echo", params=rr.GenerateParams(temperature=0.5))
    generator.generate(["x"], params=rr.GenerateParams(max_tokens=3))
    assert generator.params_seen == [rr.GenerateParams(temperature=0.5, max_tokens=3)]
    assert generator.generate([]) == []
    assert generator.calls == [1]


def test_generate_raises_for_a_failed_item_naming_its_input() -> None:
    generator = FailingGenerator(model="failing")
    with pytest.raises(rr.GenerationError, match="for input 1") as info:
        generator.generate(["fine", "FAIL here", "fine"], 2)
    assert info.value.index == 1
    assert "refused" in str(info.value)


@pytest.mark.parametrize(
    "inputs", [["text", [{"role": "user", "content": "chat"}]], "just a str", [[{"role": "x"}]]]
)
def test_generate_rejects_bad_inputs(inputs: object) -> None:
    with pytest.raises(rr.InvalidMessageError):
        EchoGenerator(model="echo").generate(inputs)  # type: ignore[arg-type]


async def test_generate_in_a_running_loop_points_to_agenerate() -> None:
    generator = EchoGenerator(model="echo")
    with pytest.raises(rr.RigRayError, match="agenerate"):
        generator.generate(["a"])
    [[result]] = await generator.agenerate(["a"])
    assert result.text == "a"
