"""Models and fake generators for the structured-output batch tests."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

from pydantic_xml import element

from rig_ray import GenerateParams, Message, Model
from tests.fakes import _FakeGenerator


class Place(Model):
    city: str = element()
    country: str = element()


class Record(Model):
    """One of every column type, a field named like an output column (`text`) and one named
    like an input column (`topic`)."""

    count: int = element()
    score: float = element()
    ok: bool = element()
    text: str = element()
    topic: str = element()
    tags: list[str] = element(tag="tag", default_factory=list)
    place: Place
    note: str | None = element(default=None)


class Label(Model):
    """A text-only model: `<label>positive</label>`."""

    value: t.Literal["positive", "negative"]


def record_xml(n: int) -> str:
    return (
        f"Here it is: <record><count>{n}</count><score>{n}.5</score><ok>true</ok>"
        f"<text>row {n}</text><topic>t{n}</topic><tag>a</tag><tag>b{n}</tag>"
        f"<place><city>Paris</city><country>FR</country></place></record>"
    )


class Stubborn(_FakeGenerator):
    """Replies with a valid <label> only once a row has been asked `needs` times, where
    `needs` is the number in its first user message (`needs N`); 'never' rows never parse.
    Every call's batch size goes to the file `log` (one line per call)."""

    log: str

    def _run(self, items: t.Any, params: t.Any) -> t.Any:
        with open(self.log, "a") as out:
            out.write(json.dumps(len(items)) + "\n")
        return super()._run(items, params)

    def _reply(self, item: t.Any, params: GenerateParams) -> str:
        conversation = t.cast(list[Message], item)
        first = next(m.content for m in conversation if m.role == "user")
        asked = sum(1 for m in conversation if m.role == "user")  # 1 + retries so far
        if "never" in first:
            return f"I cannot say (attempt {asked})."
        needs = int(first.rsplit(" ", 1)[-1])
        return "<label>positive</label>" if asked > needs else f"no label yet ({asked})"


class JSONReplies(_FakeGenerator):
    """Replies with `replies[prompt]` (as JSON text when not a str); claims schema support."""

    honours_json_schema: t.ClassVar[bool] = True
    replies: dict[str, t.Any]

    def _reply(self, item: t.Any, params: GenerateParams) -> str:
        reply = self.replies[t.cast(list[Message], item)[-1].content]
        return reply if isinstance(reply, str) else json.dumps(reply)


def calls(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()]
