"""Generators for the pipeline tests: a judge that answers JSON, one that counts its loads."""

from __future__ import annotations

import json
import os
import time
import typing as t

from tests.fakes import EchoGenerator

SCORE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer"}},
    "required": ["score"],
}


class Judge(EchoGenerator):
    """Replies `{"score": <words in the prompt>}`; "not JSON" where the prompt holds BAD.
    Each load appends a line to `log` (when given); each batch sleeps `seconds`."""

    honours_json_schema: t.ClassVar[bool] = True
    log: str | None = None
    seconds: float = 0.0

    def load(self) -> t.Any:
        if self.log:
            with open(self.log, "a") as log:
                log.write(f"{os.getpid()}\n")
        return super().load()

    def _reply(self, item: t.Any, params: t.Any) -> str:
        text = super()._reply(item, params)
        if "BAD" in text:
            return "not JSON"
        return json.dumps({"score": len(text.split())})

    async def generate_messages(self, messages: t.Any, params: t.Any) -> t.Any:
        time.sleep(self.seconds)
        return await super().generate_messages(messages, params)


class Answerer(EchoGenerator):
    """Echoes; each load appends a line to `log`; each batch sleeps `seconds`."""

    log: str | None = None
    seconds: float = 0.0

    def load(self) -> t.Any:
        if self.log:
            with open(self.log, "a") as log:
                log.write(f"{os.getpid()}\n")
        return super().load()

    async def generate_messages(self, messages: t.Any, params: t.Any) -> t.Any:
        time.sleep(self.seconds)
        return await super().generate_messages(messages, params)


class FailingAnswerer(Answerer):
    """An `Answerer` that fails the items whose prompt holds FAIL."""

    def _reply(self, item: t.Any, params: t.Any) -> t.Any:
        text = super()._reply(item, params)
        if "FAIL" in text:
            return RuntimeError(f"refused {text!r}")
        return text


class PidAnswerer(EchoGenerator):
    """Replies with the id of the process it runs in: which engine actor made each row."""

    def _reply(self, item: t.Any, params: t.Any) -> str:
        return str(os.getpid())


def questions(path: t.Any, count: int = 3) -> t.Any:
    """JSONL questions q0.. ; q1 makes the judge reply non-JSON (BAD), q2 fails answers."""
    marks = {1: " BAD", 2: " FAIL"}
    with open(path, "w") as out:
        for n in range(count):
            row = {"id": f"q{n}", "question": f"question {n}{marks.get(n, '')}"}
            out.write(json.dumps(row) + "\n")
    return path


def loads(log: t.Any) -> int:
    """Processes that loaded the generator, from its log file (0 when there is none): each
    engine actor is one (the stage's Ray Data actors load it again through the actor, which
    a real engine takes as a no-op)."""
    try:
        with open(log) as file:
            return len(set(file.read().splitlines()))
    except FileNotFoundError:
        return 0
