"""Models the message and Model tests share: a text-only block, one with its own tag, a
number, an attribute with text, and elements."""

from __future__ import annotations

from pydantic_xml import attr, element

from rig_ray import Model


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
