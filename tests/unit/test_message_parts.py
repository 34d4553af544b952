"""Message: parsed Model parts and their slices, OpenAI dicts, templating, JSON."""

from __future__ import annotations

import json
import re
import time
import typing as t

import pytest
from pydantic_xml import attr

from rig_ray import (
    InvalidMessageError,
    Message,
    Model,
    ParseError,
    RigRayError,
    TemplateError,
    fill_templates,
)
from rig_ray.message import template_fields
from tests.unit.xml_models import FinalAnswer, Labeled, Note, Person, Score, assert_synced


class XMLBlock(Model):
    text: str


class HTTPResponseCode(Model):
    text: str


# --- tags ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "tag"),
    [
        (FinalAnswer, "final-answer"),
        (XMLBlock, "xml-block"),
        (HTTPResponseCode, "http-response-code"),
        (Note, "memo"),
        (Person, "person"),
    ],
)
def test_model_tags(model: type[Model], tag: str) -> None:
    assert model.tag() == tag
    assert model.xml_tags() == f"<{tag}></{tag}>"
    if model is not Person:
        message = Message(role="assistant", content=f"x <{tag}> 1 </{tag}> y")
        assert message.parse(model).text == "1"  # type: ignore[attr-defined]


def test_explicit_tag_ignores_class_name() -> None:
    message = Message(role="assistant", content="<note>a</note> <memo>b</memo>")
    assert message.parse(Note).text == "b"


# --- text-only and attribute/element models --------------------------------------------------


@pytest.mark.parametrize(
    ("inner", "text"),
    [
        ("a < b && c > d", "a < b && c > d"),
        ("  padded  ", "padded"),
        ("x &lt; y &amp; z", "x < y & z"),
        ("if (a<b) { return a&b; }", "if (a<b) { return a&b; }"),
    ],
)
def test_text_only_model_keeps_raw_text(inner: str, text: str) -> None:
    message = Message(role="assistant", content=f"<final-answer>{inner}</final-answer>")
    assert message.parse(FinalAnswer).text == text
    assert message.content == f"<final-answer>{text}</final-answer>"
    assert_synced(message)


class Passed(Model):
    value: bool


class Weight(Model):
    value: float


@pytest.mark.parametrize(
    ("block", "model", "expected"),
    [
        ("<score> 0 </score>", Score, "<score>0</score>"),
        ("<passed>false</passed>", Passed, "<passed>false</passed>"),
        ("<weight>0</weight>", Weight, "<weight>0.0</weight>"),
        ("<score>-3</score>", Score, "<score>-3</score>"),
    ],
)
def test_a_falsy_value_is_written_back_so_it_reads_again(
    block: str, model: type[Model], expected: str
) -> None:
    # 0 and False were written back as an empty block, which no longer parsed.
    message = Message(role="assistant", content=f"judged: {block}")
    parsed = message.parse(model)
    assert message.content == f"judged: {expected}"
    assert Message(role="assistant", content=message.content).parse(model) == parsed


def test_multiline_text_goes_on_its_own_lines() -> None:
    message = Message(role="assistant", content="<final-answer>\n  one\ntwo  \n</final-answer>")
    assert message.parse(FinalAnswer).text == "one\ntwo"
    assert message.content == "<final-answer>\none\ntwo\n</final-answer>"


def test_attribute_and_text_model() -> None:
    message = Message(role="assistant", content="<labeled kind='k' >  x < y </labeled>!")
    found = message.parse(Labeled)
    assert (found.kind, found.text) == ("k", "x < y")
    assert message.content == '<labeled kind="k">x < y</labeled>!'
    assert_synced(message)


def test_attribute_and_element_model_is_pretty_printed() -> None:
    content = "see <person name='Ann'><age> 30 </age><city>A & B</city></person> ok"
    message = Message(role="assistant", content=content)
    person = message.parse(Person)
    assert (person.name, person.age, person.city) == ("Ann", 30, "A & B")
    pretty = '<person name="Ann">\n  <age>30</age>\n  <city>A &amp; B</city>\n</person>'
    assert message.content == f"see {pretty} ok"
    assert message.parts[0].slice_ == slice(4, 4 + len(pretty))


class Done(Model):
    pass


class Flag(Model):
    value: str = attr()


@pytest.mark.parametrize(
    ("model", "block", "pretty"),
    [
        (Done, "<done> </done>", "<done></done>"),
        (Flag, "<flag value='1'></flag>", '<flag value="1"></flag>'),
    ],
)
def test_models_without_children_are_written_so_they_read_back(
    model: type[Model], block: str, pretty: str
) -> None:
    message = Message(role="assistant", content=f"a {block} b")
    found = message.parse(model)
    assert message.content == f"a {pretty} b"
    assert Message(role="assistant", content=message.content).parse(model) == found
    message.content += " more"
    assert message.models == [found]
    assert_synced(message)


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ("<person><age>1</age><city>a</city></person>", "name"),
        ("<person name='x'><age>1</age></person>", "city"),
        ("<person name='x'><age>old</age><city>a</city></person>", "age"),
        ("<person name='x'><age>1<city>a</city></person>", "well-formed"),
    ],
)
def test_invalid_element_model_raises_parse_error(block: str, problem: str) -> None:
    message = Message(role="assistant", content=block)
    with pytest.raises(ParseError, match=problem) as info:
        message.parse(Person)
    assert info.value.model == "Person"
    assert isinstance(info.value, RigRayError)
    assert message.try_parse(Person) is None
    assert message.content == block  # an invalid block is left as it was
    assert message.parts == []


# --- parse, try_parse, parse_set, parse_many ---------------------------------------------------


def test_parse_missing_model_names_it() -> None:
    message = Message(role="assistant", content="nothing here")
    with pytest.raises(ParseError, match="final-answer") as info:
        message.parse(FinalAnswer)
    assert info.value.model == "FinalAnswer"
    assert message.try_parse(FinalAnswer) is None
    assert message.try_parse_set(FinalAnswer) == []
    assert message.try_parse_many(FinalAnswer, Score) == []


def test_first_valid_block_wins_over_invalid_ones() -> None:
    message = Message(
        role="assistant", content="<score>abc</score> <score> 5 </score> <score>6</score>"
    )
    assert message.parse(Score).value == 5
    assert [s.value for s in message.parse_set(Score)] == [5, 6]
    assert message.content == "<score>abc</score> <score>5</score> <score>6</score>"
    assert_synced(message)


def test_all_blocks_invalid_raises_the_validation_problem() -> None:
    message = Message(role="assistant", content="<score>abc</score>")
    with pytest.raises(ParseError, match=r"<score> is not a valid Score") as info:
        message.parse(Score)
    assert info.value.model == "Score"


def test_parse_set_minimum() -> None:
    message = Message(role="assistant", content="<score>1</score><score>2</score>")
    assert [s.value for s in message.parse_set(Score, minimum=2)] == [1, 2]
    with pytest.raises(ParseError, match="at least 3"):
        message.parse_set(Score, minimum=3)
    assert message.parse_set(FinalAnswer, minimum=0) == []


def test_parse_many_returns_content_order_and_needs_each() -> None:
    content = "<score>1</score> <final-answer>a</final-answer> <score>2</score> <memo>m</memo>"
    message = Message(role="assistant", content=content)
    found = message.parse_many(FinalAnswer, Score)
    assert [type(m).__name__ for m in found] == ["Score", "FinalAnswer", "Score"]
    assert message.try_parse_many(Note, Score) == [found[0], found[2], Note(text="m")]
    assert message.models == [found[0], found[1], found[2], Note(text="m")]
    with pytest.raises(ParseError, match="person"):
        message.parse_many(Score, Person)


# --- re-syncing slices -----------------------------------------------------------------------

TEXT = (
    "intro <score> 7 </score>\n"
    "<final-answer>\n   first &amp; a<b  \n</final-answer> middle "
    "<person name='Ann'><age> 30 </age><city>Oslo</city></person>"
    " <score>8</score> then <memo>  remember  </memo> <final-answer>second</final-answer> tail"
)
BLOCKS = re.compile(r"<(score|final-answer|person|memo)\b[\s\S]*?</\1>")
MODELS: list[type[Model]] = [Score, FinalAnswer, Person, Note]

Op = t.Callable[[Message], object]
OPS: dict[str, Op] = {
    "answer": lambda m: m.parse_set(FinalAnswer),
    "score": lambda m: m.parse_set(Score),
    "person": lambda m: m.parse(Person),
    "memo": lambda m: m.try_parse(Note),
    "many": lambda m: m.parse_many(Note, Score),
    "strip-score": lambda m: m.strip(Score),
    "strip-answer": lambda m: m.strip(FinalAnswer),
    "strip-person": lambda m: m.strip(Person),
    "edit": lambda m: setattr(m, "content", "new " + m.content + " <score>9</score>"),
}


@pytest.mark.parametrize(
    "sequence",
    [
        ["answer", "person", "score", "memo"],
        ["memo", "score", "person", "answer"],
        ["person", "answer", "strip-score", "score", "memo"],
        ["score", "strip-answer", "person", "strip-score", "memo"],
        ["many", "answer", "person", "answer", "score"],
        ["answer", "score", "edit", "person", "strip-answer", "edit"],
        ["person", "memo", "strip-person", "answer", "edit", "strip-score"],
    ],
)
def test_slices_stay_right_through_edits(sequence: list[str]) -> None:
    message = Message(role="assistant", content=TEXT)
    for name in sequence:
        OPS[name](message)
        assert_synced(message)
    message.try_parse_many(*MODELS)
    assert_synced(message)
    for model in MODELS:
        message.strip(model)
        assert_synced(message)
    assert message.parts == []
    # Only the blocks went: the text around them is intact.
    outside = BLOCKS.sub("", message.content)
    assert outside == message.content
    assert outside.replace("new ", "").startswith("intro \n middle ")
    assert outside.rstrip().endswith("tail")


def test_full_parse_gives_expected_content() -> None:
    message = Message(role="assistant", content=TEXT)
    message.try_parse_many(*MODELS)
    assert [type(m).__name__ for m in message.models] == [
        "Score",
        "FinalAnswer",
        "Person",
        "Score",
        "Note",
        "FinalAnswer",
    ]
    assert message.content == (
        "intro <score>7</score>\n<final-answer>first & a<b</final-answer> middle "
        '<person name="Ann">\n  <age>30</age>\n  <city>Oslo</city>\n</person>'
        " <score>8</score> then <memo>remember</memo> <final-answer>second</final-answer> tail"
    )
    assert_synced(message)
    assert BLOCKS.sub("", message.content) == BLOCKS.sub("", TEXT)


def test_parse_again_is_stable() -> None:
    message = Message(role="assistant", content=TEXT)
    message.try_parse_many(*MODELS)
    content, parts = message.content, list(message.parts)
    message.try_parse_many(*MODELS)
    assert (message.content, message.parts) == (content, parts)


def test_strip_returns_removed_parts_and_fixes_the_rest() -> None:
    message = Message(role="assistant", content="a <score> 1 </score> b <memo>n</memo> c")
    message.parse(Score)
    message.parse(Note)
    removed = message.strip(Score)
    assert [p.model for p in removed] == [Score(value=1)]
    assert message.content == "a  b <memo>n</memo> c"
    assert [p.slice_ for p in message.parts] == [slice(5, 19)]
    assert_synced(message)
    assert message.strip(Person) == []


def test_assigning_content_parses_the_same_models_again() -> None:
    message = Message(role="assistant", content="<score>1</score>")
    message.parse(Score)
    message.content = "x <score> 2 </score> y <score>3</score> <memo>not parsed</memo>"
    assert [p.model for p in message.parts] == [Score(value=2), Score(value=3)]
    assert message.content == "x <score>2</score> y <score>3</score> <memo>not parsed</memo>"
    assert_synced(message)
    message.content = "no blocks"
    assert (message.content, message.parts) == ("no blocks", [])


# --- JSON ------------------------------------------------------------------------------------


def test_json_round_trip_keeps_parts_and_metadata() -> None:
    message = Message(role="assistant", content=TEXT, metadata={"k": [1, 2]})
    message.try_parse_many(*MODELS)
    again = Message.model_validate_json(message.model_dump_json())
    assert again == message
    assert [type(p.model) for p in again.parts] == [type(p.model) for p in message.parts]
    assert_synced(again)


def test_json_part_of_unknown_class_is_dropped_but_text_kept() -> None:
    message = Message(role="assistant", content="<score>1</score> <memo>m</memo>")
    message.try_parse_many(Score, Note)
    data = json.loads(message.model_dump_json())
    data["parts"][0]["model"]["class"] = "nowhere:Missing"
    again = Message.model_validate(data)
    assert again.content == message.content
    assert again.models == [Note(text="m")]


# --- OpenAI dicts ----------------------------------------------------------------------------


def test_fit_reads_openai_shapes() -> None:
    parts = {
        "role": "user",
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
    }
    assert Message.fit(parts).content == "ab"
    assert Message.fit({"role": "assistant", "content": None}).content == ""
    tool = Message.fit({"role": "tool", "content": "42", "tool_call_id": "c1", "name": "calc"})
    assert (tool.role, tool.tool_call_id, tool.name) == ("tool", "c1", "calc")
    assert tool.to_openai() == {
        "role": "tool",
        "content": "42",
        "name": "calc",
        "tool_call_id": "c1",
    }
    assert Message.fit("hi") == Message(role="user", content="hi")
    same = Message(role="system", content="s")
    assert Message.fit(same) is same
    listed = Message.fit_many(["a", {"role": "assistant", "content": "b"}, same])
    assert [(m.role, m.content) for m in listed] == [
        ("user", "a"),
        ("assistant", "b"),
        ("system", "s"),
    ]
    assert Message.fit_many({"role": "user", "content": "x"})[0].content == "x"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"role": "robot", "content": "x"}, "role"),
        ({"role": "user", "content": "x", "tool_calls": [{"id": "c1"}]}, "tool_calls"),
        ({"role": "user"}, "content"),
        ({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, "image_url"),
        (42, "int"),
    ],
)
def test_fit_rejects_bad_messages(value: t.Any, problem: str) -> None:
    with pytest.raises(InvalidMessageError, match=problem) as info:
        Message.fit(value)
    assert info.value.value == value
    assert isinstance(info.value, RigRayError)


def test_fit_many_rejects_non_sequences() -> None:
    with pytest.raises(InvalidMessageError):
        Message.fit_many(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidMessageError, match="role"):
        Message.fit_many(["ok", {"role": "nobody", "content": "x"}])


def test_to_openai_leaves_out_unset_and_local_fields() -> None:
    message = Message(role="assistant", content="<score>1</score>", metadata={"m": 1})
    message.parse(Score)
    assert message.to_openai() == {"role": "assistant", "content": "<score>1</score>"}


@pytest.mark.parametrize(
    "content",
    ["<final-answer>" * 20_000, "<final-answer" + " " * 100_000, "<final-answer " * 20_000],
)
def test_scanning_unclosed_blocks_is_linear(content: str) -> None:
    started = time.perf_counter()
    assert Message(role="assistant", content=content).try_parse(FinalAnswer) is None
    assert time.perf_counter() - started < 2  # was tens of seconds: quadratic backtracking


# --- templating ------------------------------------------------------------------------------


def test_apply_substitutes_safely_and_returns_a_copy() -> None:
    message = Message(role="user", content="$greet ${name}, $missing costs $$5")
    filled = message.apply({"greet": "hi", "name": "x"}, name="Bo")
    assert filled.content == "hi Bo, $missing costs $5"
    assert message.content == "$greet ${name}, $missing costs $$5"
    tagged = Message(role="user", content="$x", metadata={"seen": []})
    tagged.apply(x=1).metadata["seen"].append(1)
    assert tagged.metadata == {"seen": []}


def test_apply_strict_names_missing_and_unused() -> None:
    message = Message(role="user", content="$a and $b cost $$c")
    with pytest.raises(TemplateError) as info:
        message.apply(a=1, c=2, strict=True)
    assert (info.value.missing, info.value.unused) == (["b"], ["c"])
    assert "$b" in str(info.value)
    assert "c" in str(info.value)
    assert not str(info.value).startswith("'")
    assert message.apply(a=1, b=2, strict=True).content == "1 and 2 cost $c"


def test_a_braced_field_takes_any_name() -> None:
    """A column may be named `Question Text`: braces take any name without `{` or `}`, a
    bare `$name` stays letters, digits and `_`."""
    message = Message(role="user", content="${Question Text}? $a-b ${x}${é} $$5")
    assert template_fields(message.content) == ["Question Text", "a", "x", "é"]
    filled = message.apply({"Question Text": "Why", "a": 1, "x": 2, "é": 3})
    assert filled.content == "Why? 1-b 23 $5"
    with pytest.raises(TemplateError, match=r"no value for \$\{Question Text\}, \$a"):
        message.apply(x=2, strict=True, **{"é": 3})


def test_fill_templates_strict_counts_fields_across_texts() -> None:
    assert fill_templates(["$a", "$b $a"], {"a": 1, "b": 2}, strict=True) == ["1", "2 1"]
    with pytest.raises(TemplateError) as info:
        fill_templates(["$a", "$b"], {"a": 1}, strict=True)
    assert info.value.missing == ["b"]
    with pytest.raises(TemplateError) as info:
        fill_templates(["$a"], {"a": 1, "zzz": 2}, strict=True)
    assert info.value.unused == ["zzz"]
    assert isinstance(info.value, KeyError)


def test_openai_response_messages_with_empty_extras_are_read():
    dumped = {"role": "assistant", "content": "hi", "tool_calls": None, "refusal": None}
    assert Message.fit(dumped) == Message(role="assistant", content="hi")
    with pytest.raises(InvalidMessageError, match="tool_calls"):
        Message.fit({"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]})
