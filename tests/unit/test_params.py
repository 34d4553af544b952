"""GenerateParams, Usage, stop reasons, Message, and the Generator base class's own logic."""

from __future__ import annotations

import copy
import pickle
import typing as t

import pytest
from pydantic import ValidationError

from rig_ray import (
    GeneratedMessage,
    GeneratedText,
    GenerateParams,
    GenerationError,
    InvalidMessageError,
    LiteLLMGenerator,
    Message,
    RigRayError,
    TransformersGenerator,
    Usage,
    VLLMGenerator,
)
from rig_ray.generator.base import to_stop_reason
from tests.fakes import CallbackGenerator, EchoGenerator, FailingGenerator, FixedGenerator

# --- GenerateParams ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("max_tokens", 0),
        ("top_k", -2),
        ("top_p", 0),
        ("top_p", 1.01),
        ("presence_penalty", -2.1),
        ("presence_penalty", 2.1),
        ("frequency_penalty", -2.1),
        ("frequency_penalty", 2.1),
        ("timeout", 0),
        ("seed", "x"),
        ("stop", 3),
        ("extra", [1]),
        ("unknown_field", 1),
    ],
)
def test_params_reject_out_of_range(field: str, value: t.Any) -> None:
    with pytest.raises(ValidationError) as info:
        GenerateParams(**{field: value})
    assert info.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 0),
        ("max_tokens", 1),
        ("top_k", -1),
        ("top_p", 1),
        ("top_p", 1e-9),
        ("presence_penalty", -2),
        ("frequency_penalty", 2),
        ("timeout", 0.001),
        ("seed", -(2**40)),
    ],
)
def test_params_accept_edge_values(field: str, value: t.Any) -> None:
    assert getattr(GenerateParams(**{field: value}), field) == value


def test_params_are_frozen() -> None:
    params = GenerateParams(temperature=0.5)
    with pytest.raises(ValidationError):
        params.temperature = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("stop", "expected"),
    [("x", ["x"]), (["a", "b"], ["a", "b"]), ([], []), (None, None)],
)
def test_stop_accepts_one_str(stop: t.Any, expected: list[str] | None) -> None:
    assert GenerateParams(stop=stop).stop == expected


@pytest.mark.parametrize(
    "settings",
    [
        {"stop": ""},  # would match at once: vLLM refuses it, transformers stopped after a token
        {"stop": ["a", ""]},
        {"seed": 2**63},  # past the 64 bits the engines take (torch: "Overflow ...")
        {"seed": -(2**63) - 1},
        {"temperature": float("inf")},
        {"temperature": float("nan")},
        {"timeout": float("inf")},
    ],
)
def test_settings_no_engine_can_run_are_refused(settings: dict[str, t.Any]) -> None:
    with pytest.raises(ValidationError, match=next(iter(settings))):
        GenerateParams(**settings)


def test_merge_later_wins_and_unset_never_overrides() -> None:
    base = GenerateParams(temperature=0.5, max_tokens=10, stop=["a", "b"], seed=1)
    first = GenerateParams(temperature=0.7, top_p=0.9)
    second = GenerateParams(temperature=0.0, stop="c")
    merged = base.merge_with(first, None, second, GenerateParams())
    assert merged == GenerateParams(temperature=0.0, max_tokens=10, top_p=0.9, stop=["c"], seed=1)


@pytest.mark.parametrize(
    "others",
    [(), (None,), (GenerateParams(),), (None, GenerateParams(), None)],
)
def test_merge_with_nothing_is_equal(others: tuple[GenerateParams | None, ...]) -> None:
    base = GenerateParams(temperature=0.5, extra={"a": 1})
    assert base.merge_with(*others) == base


def test_merge_extra_key_by_key() -> None:
    base = GenerateParams(extra={"a": 1, "b": {"x": 1}})
    merged = base.merge_with(
        GenerateParams(extra={"b": {"y": 2}, "c": 3}), GenerateParams(extra={"c": 4})
    )
    # Key by key at the top level: a nested dict is replaced, not merged.
    assert merged.extra == {"a": 1, "b": {"y": 2}, "c": 4}


def test_merge_leaves_originals_unchanged() -> None:
    base = GenerateParams(temperature=0.5, stop=["a"], extra={"a": 1})
    other = GenerateParams(temperature=0.9, extra={"b": 2})
    merged = base.merge_with(other)
    assert merged is not base
    assert base == GenerateParams(temperature=0.5, stop=["a"], extra={"a": 1})
    assert other == GenerateParams(temperature=0.9, extra={"b": 2})
    assert merged.extra == {"a": 1, "b": 2}
    assert merged.extra is not base.extra
    assert merged.stop is not base.stop


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (GenerateParams(), {}),
        (GenerateParams(temperature=0), {"temperature": 0.0}),
        (
            GenerateParams(max_tokens=5, stop="x", extra={"logprobs": 2, "n": None}),
            {"max_tokens": 5, "stop": ["x"], "logprobs": 2, "n": None},
        ),
    ],
)
def test_to_dict(params: GenerateParams, expected: dict[str, t.Any]) -> None:
    assert params.to_dict() == expected


# --- Usage and stop reasons ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "total"),
    [
        ({}, 0),
        ({"input_tokens": 3, "output_tokens": 4}, 7),
        ({"input_tokens": 3}, 3),
        ({"input_tokens": 3, "output_tokens": 4, "total_tokens": 0}, 7),
        ({"input_tokens": 3, "output_tokens": 4, "total_tokens": None}, 7),
        ({"input_tokens": 3, "output_tokens": 4, "total_tokens": 10}, 10),
    ],
)
def test_usage_total(kwargs: dict[str, t.Any], total: int) -> None:
    assert Usage(**kwargs).total_tokens == total


def test_usage_add_and_bounds() -> None:
    total = Usage(input_tokens=1, output_tokens=2) + Usage(
        input_tokens=3, output_tokens=4, total_tokens=20
    )
    assert total == Usage(input_tokens=4, output_tokens=6, total_tokens=23)
    with pytest.raises(ValidationError):
        Usage(input_tokens=-1)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("stop", "stop"),
        ("eos", "stop"),
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("STOP", "stop"),
        ("length", "length"),
        ("max_tokens", "length"),
        ("content_filter", "content_filter"),
        ("tool_calls", "tool_calls"),
        ("function_call", "tool_calls"),
        ("tool_use", "tool_calls"),
        ("abort", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_to_stop_reason(raw: str | None, reason: str) -> None:
    assert to_stop_reason(raw) == reason


def test_generated_results() -> None:
    reply = GeneratedMessage(message=Message(role="assistant", content="hi"))
    assert reply.text == "hi"
    assert reply.stop_reason == "unknown"
    assert reply.usage is None
    assert GeneratedText(text="x", stop_reason="length").stop_reason == "length"
    with pytest.raises(ValidationError):
        GeneratedText(text="x", stop_reason="done")  # type: ignore[arg-type]


# --- Message -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hi", Message(role="user", content="hi")),
        ("", Message(role="user", content="")),
        ({"role": "system", "content": "be brief"}, Message(role="system", content="be brief")),
        (Message(role="tool", content="42"), Message(role="tool", content="42")),
    ],
)
def test_message_fit(value: t.Any, expected: Message) -> None:
    assert Message.fit(value) == expected


def test_message_fit_returns_messages_as_they_are() -> None:
    message = Message(role="assistant", content="x")
    assert Message.fit(message) is message
    assert message.to_openai() == {"role": "assistant", "content": "x"}


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"role": "robot", "content": "x"}, "role"),
        ({"role": "user"}, "content"),
        ({"content": "x"}, "role"),
        ({"role": "user", "content": 3}, "content"),
        ({"role": "user", "content": "x", "mood": "happy"}, "mood"),
        (42, "got int"),
        (None, "got NoneType"),
        (["hi"], "got list"),
    ],
)
def test_message_fit_rejects(value: t.Any, fragment: str) -> None:
    with pytest.raises(InvalidMessageError) as info:
        Message.fit(value)
    assert isinstance(info.value, RigRayError)
    assert isinstance(info.value, ValueError)
    assert info.value.value is value
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ("hi", [Message(role="user", content="hi")]),
        ({"role": "system", "content": "s"}, [Message(role="system", content="s")]),
        (Message(role="user", content="m"), [Message(role="user", content="m")]),
        ([], []),
        (
            ["a", {"role": "assistant", "content": "b"}, Message(role="user", content="c")],
            [
                Message(role="user", content="a"),
                Message(role="assistant", content="b"),
                Message(role="user", content="c"),
            ],
        ),
        (("a",), [Message(role="user", content="a")]),
    ],
)
def test_message_fit_many(values: t.Any, expected: list[Message]) -> None:
    assert Message.fit_many(values) == expected


@pytest.mark.parametrize("values", [["ok", {"role": "robot", "content": "x"}], ["ok", 3]])
def test_message_fit_many_rejects(values: list[t.Any]) -> None:
    with pytest.raises(InvalidMessageError):
        Message.fit_many(values)


def test_message_fit_many_rejects_non_sequence() -> None:
    with pytest.raises(InvalidMessageError):
        Message.fit_many(42)  # type: ignore[arg-type]


# --- Generator -----------------------------------------------------------------------------


def test_merged_params_overlays_per_item() -> None:
    generator = EchoGenerator(model="m", params=GenerateParams(temperature=0.5, max_tokens=9))
    merged = generator.merged_params([GenerateParams(), GenerateParams(temperature=0.1)], 2)
    assert merged == [
        GenerateParams(temperature=0.5, max_tokens=9),
        GenerateParams(temperature=0.1, max_tokens=9),
    ]
    assert generator.merged_params([], 0) == []


@pytest.mark.parametrize(("given", "count"), [(0, 1), (2, 1), (1, 3)])
def test_merged_params_length_mismatch(given: int, count: int) -> None:
    generator = EchoGenerator(model="m")
    with pytest.raises(GenerationError, match=f"got {count} inputs but {given} params"):
        generator.merged_params([GenerateParams()] * given, count)


_PICKLABLE = [
    FixedGenerator(model="m", text="t", api_key="k", params=GenerateParams(stop="x")),
    EchoGenerator(model="m", params=GenerateParams(extra={"a": [1]})),
    FailingGenerator(model="m", fail_on="BOOM"),
]


@pytest.mark.parametrize("generator", _PICKLABLE, ids=lambda g: type(g).__name__)
def test_pickle_fakes(generator: FixedGenerator) -> None:
    loaded = pickle.loads(pickle.dumps(generator))
    assert type(loaded) is type(generator)
    assert loaded == generator
    assert loaded.api_key == generator.api_key
    assert copy.deepcopy(generator) == generator


@pytest.mark.parametrize(
    "generator",
    [
        LiteLLMGenerator(model="m", api_key="k", max_connections=3),
        VLLMGenerator(model="m", enforce_eager=True),
        TransformersGenerator(model="m", device="cpu"),
    ],
    ids=lambda g: type(g).__name__,
)
def test_pickle_engine_generators(generator: LiteLLMGenerator) -> None:
    loaded = pickle.loads(pickle.dumps(generator))
    assert loaded == generator
    assert loaded.api_key == generator.api_key
    assert not loaded.is_loaded or isinstance(loaded, LiteLLMGenerator)


def test_equality_ignores_api_key() -> None:
    a = LiteLLMGenerator(model="m", api_key="sk-one")
    b = LiteLLMGenerator(model="m", api_key="sk-two")
    assert a == b
    assert hash(a) == hash(b)
    assert "sk-one" not in repr(a)


@pytest.mark.parametrize(
    "other",
    [
        LiteLLMGenerator(model="n"),
        LiteLLMGenerator(model="m", max_connections=3),
        LiteLLMGenerator(model="m", params=GenerateParams(temperature=0)),
        VLLMGenerator(model="m"),
        "m",
    ],
    ids=lambda g: type(g).__name__,
)
def test_inequality(other: t.Any) -> None:
    assert LiteLLMGenerator(model="m") != other


def test_equality_needs_the_same_class() -> None:
    assert FixedGenerator(model="m") != EchoGenerator(model="m")
    assert EchoGenerator(model="m") == EchoGenerator(model="m")


def test_hash_usable_in_sets_and_dicts() -> None:
    generators = {
        VLLMGenerator(model="m", engine_args={"a": [1]}),
        VLLMGenerator(model="m", engine_args={"a": [1]}, api_key="k"),
        VLLMGenerator(model="m", engine_args={"a": [2]}),
        LiteLLMGenerator(model="m", params=GenerateParams(extra={"x": {}})),
    }
    assert len(generators) == 3
    lookup = {EchoGenerator(model="m"): "echo"}
    assert lookup[EchoGenerator(model="m")] == "echo"


def test_generators_are_frozen_and_closed() -> None:
    generator = VLLMGenerator(model="m")
    with pytest.raises(ValidationError):
        generator.model = "n"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        VLLMGenerator(model="m", not_a_field=1)  # type: ignore[call-arg]


# --- the fakes -----------------------------------------------------------------------------


async def test_fakes_answer_each_item_with_one_call_per_batch() -> None:
    generator = FailingGenerator(model="m", params=GenerateParams(max_tokens=5))
    texts = await generator.generate_texts(
        ["a b", "FAIL", "c"], [GenerateParams(), GenerateParams(), GenerateParams(seed=1)]
    )
    conversation = [Message(role="system", content="s"), Message(role="user", content="hi")]
    messages = await generator.generate_messages([conversation], [GenerateParams()])
    assert generator.calls == [3, 1]
    assert isinstance(texts[0], GeneratedText)
    assert texts[0].text == "a b"
    assert texts[0].usage == Usage(input_tokens=2, output_tokens=2)
    assert isinstance(texts[1], GenerationError)
    assert isinstance(messages[0], GeneratedMessage)
    assert messages[0].message == Message(role="assistant", content="hi")
    assert messages[0].stop_reason == "stop"
    assert [p.max_tokens for p in generator.params_seen] == [5, 5, 5, 5]
    assert generator.params_seen[2].seed == 1


async def test_fixed_and_callback_fakes() -> None:
    fixed = FixedGenerator(model="m", text="ok")
    assert [r.text for r in await fixed.generate_texts(["a", "b"], [GenerateParams()] * 2)] == [
        "ok",
        "ok",
    ]

    def callback(item: t.Any, params: GenerateParams) -> str:
        if item == "raise":
            raise ValueError("bad item")
        return f"{item}@{params.temperature}"

    generator = CallbackGenerator(model="m", callback=callback)
    results = await generator.generate_texts(
        ["x", "raise"], [GenerateParams(temperature=0.5), GenerateParams()]
    )
    assert isinstance(results[0], GeneratedText)
    assert results[0].text == "x@0.5"
    assert isinstance(results[1], ValueError)
    with pytest.raises(GenerationError):
        await generator.generate_texts(["x"], [])
    assert generator.calls == [2]
