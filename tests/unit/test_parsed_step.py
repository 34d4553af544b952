"""The batch parse step without Ray: it re-asks exactly as `ChatPipeline.until_parsed_as` does,
and column types from model annotations and JSON schemas."""

from __future__ import annotations

import typing as t

import pyarrow as pa
import pytest
from pydantic import BaseModel

from rig_ray import GenerateParams, Message, Model
from rig_ray.batch.columns import model_columns, name_columns, schema_columns
from rig_ray.batch.parsed import ParsedReply, StructuredSpec, structured_step
from rig_ray.errors import BatchInputError
from tests.fakes import CallbackGenerator


class Verdict(Model):
    value: t.Literal["yes", "no"]


def _stubborn(seen: list[list[dict[str, str]]]) -> CallbackGenerator:
    """Answers <verdict>yes</verdict> on the second ask; records every conversation."""

    def reply(conversation: list[Message], _: GenerateParams) -> str:
        seen.append([m.to_openai() for m in conversation])
        asked = sum(m.role == "user" for m in conversation)
        return "<verdict>yes</verdict>" if asked > 1 else "maybe?"

    return CallbackGenerator(model="stubborn", callback=reply)


async def test_the_step_resends_exactly_what_until_parsed_as_sends() -> None:
    prompts = [[Message(role="user", content=f"question {n}")] for n in range(2)]
    via_step: list[list[dict[str, str]]] = []
    step = structured_step(StructuredSpec.build(Verdict, None, 2), ["question"])
    assert step is not None
    generator = _stubborn(via_step)
    results = await step.generate(generator, prompts, [GenerateParams()] * 2)
    via_chat: list[list[dict[str, str]]] = []
    await _stubborn(via_chat).chat().until_parsed_as(Verdict, max_depth=2).run_batch(prompts)
    assert via_step == via_chat
    assert generator.calls == [2, 2]
    retry = via_step[-1]
    assert [m["role"] for m in retry] == ["user", "assistant", "user"]
    assert retry[1]["content"] == "maybe?"
    assert retry[2]["content"].startswith("Your reply could not be read: no <verdict> block")
    assert all(isinstance(r, ParsedReply) and r.values == {"value": "yes"} for r in results)
    assert [t.cast(ParsedReply, r).parse_retries for r in results] == [1, 1]


class Score(Model):
    value: int


class Passed(Model):
    value: bool


@pytest.mark.parametrize(
    ("model", "reply", "values"),
    [
        (Score, "<score> 0 </score>", {"value": 0}),
        (Passed, "<passed>false</passed>", {"value": False}),
    ],
)
async def test_a_reply_of_zero_or_false_keeps_it_in_its_text(
    model: type[Model], reply: str, values: dict[str, t.Any]
) -> None:
    # The text column held the block emptied (<score></score>), so a later stage's $text lost it.
    step = structured_step(StructuredSpec.build(model, None, 1), ["question"])
    assert step is not None
    generator = CallbackGenerator(model="judge", callback=lambda *_: f"judged: {reply}")
    (result,) = await step.generate(
        generator, [[Message(role="user", content="q")]], [GenerateParams()]
    )
    assert isinstance(result, ParsedReply)
    assert result.values == values
    assert result.message.content == f"judged: {reply.replace(' 0 ', '0')}"


class Inner(BaseModel):  # model_columns takes any pydantic model: Models are ones
    a: int
    b: list[float]


class Mixed(BaseModel):
    maybe: int | None = None
    choice: t.Literal[1, 2]
    inner: Inner
    mapping: dict[str, int] = {}
    either: int | str = 0


def test_model_annotations_to_arrow_types() -> None:
    assert model_columns(Mixed) == [
        ("maybe", pa.int64(), False),
        ("choice", pa.int64(), False),
        ("inner", pa.struct([("a", pa.int64()), ("b", pa.list_(pa.float64()))]), False),
        ("mapping", pa.string(), True),  # no column type for a dict: its JSON text
        ("either", pa.string(), True),
    ]


def test_schema_properties_to_arrow_types() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "flag": {"type": ["boolean", "null"]},
            "kind": {"enum": ["a", "b"]},
            "free": {},
        },
    }
    assert schema_columns(schema) == [
        ("n", pa.int64(), False),
        ("flag", pa.bool_(), False),
        ("kind", pa.string(), False),
        ("free", pa.string(), True),
    ]
    with pytest.raises(BatchInputError, match="properties"):
        schema_columns({"type": "object"})


def test_clashing_names_get_the_prefix_until_free() -> None:
    fields = [("text", pa.string(), False), ("x", pa.int64(), False)]
    named = name_columns(fields, ["text", "parsed_text"])
    assert [c.name for c in named] == ["parsed_parsed_text", "x"]
    assert [c.key for c in named] == ["text", "x"]
