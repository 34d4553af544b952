"""A search over Models of many field types: what `to_pretty_xml` writes (the form a parse
writes back into a message) reads back as the same model, alone and inside a message.

Characters XML cannot hold (controls, surrogates, noncharacters such as U+FFFE) are not
drawn. Left out, as they are read by design: an empty string (pydantic-xml reads an empty
element as missing), a line break or tab inside an attribute (XML reads it as a space), and,
in a text-only model, text that holds an entity (`&amp;`, `&lt`): such a model takes its text
as written and reads entities that a model may have escaped, so `&amp;` reads back as `&`.
"""

from __future__ import annotations

import html
import typing as t

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic_xml import element

from rig_ray import Message, Model
from tests.unit.xml_models import Labeled, Person


class Text(Model):
    text: str


class Whole(Model):
    value: int


class Real(Model):
    value: float


class Flag(Model):
    value: bool


class Maybe(Model):
    value: int | None = None


class Choice(Model):
    value: t.Literal["yes", "no"]


class Items(Model):
    items: list[str] = element(tag="item", default_factory=list)


SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
characters = st.characters(blacklist_categories=("Cs", "Cc", "Cn")) | st.sampled_from("<>&\"'\n\t ")
texts = st.text(characters, max_size=20)
words = texts.filter(bool)  # an empty element reads as missing
# a text-only model's text is read stripped, its entities unescaped
stripped = texts.map(str.strip).filter(lambda text: text and html.unescape(text) == text)
attributes = texts.filter(lambda text: not any(c in text for c in "\n\t\r"))

models = st.one_of(
    stripped.map(lambda text: Text(text=text)),
    st.integers(-(10**20), 10**20).map(lambda value: Whole(value=value)),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda value: Real(value=value)),
    st.booleans().map(lambda value: Flag(value=value)),
    (st.none() | st.integers(-5, 5)).map(lambda value: Maybe(value=value)),
    st.sampled_from(["yes", "no"]).map(lambda value: Choice(value=value)),
    st.builds(Labeled, kind=attributes, text=stripped),
    st.builds(Person, name=attributes, age=st.integers(-5, 200), city=words),
    st.builds(Items, items=st.lists(words, max_size=3)),
)


def check(model: Model, before: str) -> None:
    written = model.to_pretty_xml()
    found = type(model).scan(written)
    assert [value for value, _ in found] == [model], written
    message = Message(role="assistant", content=f"{before}\n{written}")
    assert message.parse(type(model)) == model
    assert message.content == f"{before}\n{written}"  # written back as it was


@settings(max_examples=300, **SETTINGS)  # type: ignore[arg-type]
@given(models, st.sampled_from(["", "The answer:", "a < b & c"]))
def test_what_a_model_writes_reads_back_as_it(model: Model, before: str) -> None:
    check(model, before)


@pytest.mark.slow
@settings(max_examples=5000, **SETTINGS)  # type: ignore[arg-type]
@given(models, st.sampled_from(["", "The answer:", "a < b & c"]))
def test_what_a_model_writes_reads_back_as_it_explored(model: Model, before: str) -> None:
    check(model, before)
