"""Models the message and Model tests share (a text-only block, one with its own tag, a
number, an attribute with text, and elements) and their check of a message's parts."""

from __future__ import annotations

import itertools

from pydantic_xml import attr, element

from rig_ray import Message, Model


class FinalAnswer(Model):
    text: str


class Note(Model, tag="memo"):
    text: str


class Score(Model):
    value: int


class Labeled(Model):
    kind: str = attr()
    text: str


class Person(Model):
    name: str = attr()
    age: int = element()
    city: str = element()


def assert_synced(message: Message) -> None:
    """Every part's slice holds exactly its model's pretty XML; parts ordered, disjoint."""
    for part in message.parts:
        assert message.content[part.slice_] == part.model.to_pretty_xml()
    starts = [(p.slice_.start, p.slice_.stop) for p in message.parts]
    assert starts == sorted(starts)
    for (_, stop), (start, _) in itertools.pairwise(starts):
        assert stop <= start
