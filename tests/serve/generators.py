"""Generators for the endpoint tests beyond tests/fakes.py: a slow one (to fill the queue), a
chat-only one, a callback that writes back the params it got, one that hangs, one that fails,
and one that streams slowly. They travel to the Serve
replicas by value, like any class defined outside rig_ray."""

from __future__ import annotations

import asyncio
import json
import os
import time
import typing as t
from pathlib import Path

from pydantic import PrivateAttr

from rig_ray import GeneratedChunk, GeneratedMessage, GenerateParams, Generator, Message, Usage


class SlowGenerator(Generator):
    """Answers "slow" after `delay` seconds per batch, without blocking the event loop."""

    delay: float = 1.0

    async def generate_messages(
        self, messages: t.Sequence[t.Sequence[Message]], params: t.Sequence[GenerateParams]
    ) -> list[GeneratedMessage | BaseException]:
        await asyncio.sleep(self.delay)
        reply = Message(role="assistant", content="slow")
        return [GeneratedMessage(message=reply, stop_reason="stop") for _ in messages]


class ChatOnlyGenerator(Generator):
    """Chats only: `generate_texts` keeps the base class's NotImplementedError."""

    async def generate_messages(
        self, messages: t.Sequence[t.Sequence[Message]], params: t.Sequence[GenerateParams]
    ) -> list[GeneratedMessage | BaseException]:
        reply = Message(role="assistant", content="chat only")
        return [GeneratedMessage(message=reply, stop_reason="stop") for _ in messages]


def params_as_json(item: t.Any, params: GenerateParams) -> str:
    """A CallbackGenerator callback: the merged params the item arrived with, as JSON."""
    return json.dumps(params.to_dict(), sort_keys=True)


class HangingGenerator(Generator):
    """Replies "ok" at once, but never to a batch with a message containing HANG (until the
    call is cancelled); a message with STICK makes every later call of this replica hang
    too. Replies carry the replica's process id."""

    _stuck: bool = PrivateAttr(False)

    async def generate_messages(
        self, messages: t.Sequence[t.Sequence[Message]], params: t.Sequence[GenerateParams]
    ) -> list[GeneratedMessage | BaseException]:
        contents = [conversation[-1].content for conversation in messages]
        self._stuck = self._stuck or any("STICK" in content for content in contents)
        if self._stuck or any("HANG" in content for content in contents):
            await asyncio.Event().wait()
        reply = Message(role="assistant", content=f"ok {os.getpid()}")
        return [GeneratedMessage(message=reply, stop_reason="stop") for _ in messages]


class BoomGenerator(Generator):
    """Every generate call fails whole, with an error text that must not reach clients."""

    async def generate_messages(
        self, messages: t.Sequence[t.Sequence[Message]], params: t.Sequence[GenerateParams]
    ) -> list[GeneratedMessage | BaseException]:
        raise RuntimeError(f"cannot reach {LEAKY}")


LEAKY = "http://10.1.2.3:9999/v1 with /models/private-weights"
"""Internal detail in BoomGenerator's error."""


class TickerGenerator(Generator):
    """Streams `chunks` pieces ("tick0 ", "tick1 ", ...), `delay` seconds apart. A stream
    that is stopped before its end writes a file named after the last message's content into
    `record_dir`, so a test can see that a client's disconnect reached the generator."""

    batches_continuously: t.ClassVar[bool] = True

    chunks: int = 8
    delay: float = 0.25
    record_dir: str | None = None

    async def generate_messages(
        self, messages: t.Sequence[t.Sequence[Message]], params: t.Sequence[GenerateParams]
    ) -> list[GeneratedMessage | BaseException]:
        await asyncio.sleep(self.chunks * self.delay)
        text = "".join(f"tick{i} " for i in range(self.chunks))
        reply = Message(role="assistant", content=text)
        return [GeneratedMessage(message=reply, stop_reason="stop") for _ in messages]

    async def stream_message(
        self, messages: t.Sequence[Message], params: GenerateParams | None = None
    ) -> t.AsyncIterator[GeneratedChunk]:
        finished = False
        try:
            for i in range(self.chunks):
                await asyncio.sleep(self.delay)
                yield GeneratedChunk(text=f"tick{i} ")
            finished = True
            usage = Usage(input_tokens=1, output_tokens=self.chunks)
            yield GeneratedChunk(stop_reason="stop", usage=usage)
        finally:
            if not finished and self.record_dir is not None:
                name = messages[-1].content if messages else "unnamed"
                (Path(self.record_dir) / name).write_text("stopped")


class GatedGenerator(Generator):
    """Loads only once the file `gate` exists (a slow load, by construction); then answers
    "ready"."""

    gate: str = ""

    def load(self) -> t.Self:
        while not Path(self.gate).exists():
            time.sleep(0.1)
        return self

    async def generate_messages(
        self, messages: t.Sequence[t.Sequence[Message]], params: t.Sequence[GenerateParams]
    ) -> list[GeneratedMessage | BaseException]:
        reply = Message(role="assistant", content="ready")
        return [GeneratedMessage(message=reply, stop_reason="stop") for _ in messages]


class BlockingGenerator(Generator):
    """Every call writes a file into `started_dir` (named after the last message) and then
    waits until it is cancelled: a request that runs for as long as the test wants. With a
    `gate`, its load writes `<gate>.loading` and then waits until the file `gate` exists."""

    started_dir: str = ""
    gate: str = ""

    def load(self) -> t.Self:
        if self.gate:
            Path(f"{self.gate}.loading").touch()
        while self.gate and not Path(self.gate).exists():
            time.sleep(0.1)
        return self

    async def generate_messages(
        self, messages: t.Sequence[t.Sequence[Message]], params: t.Sequence[GenerateParams]
    ) -> list[GeneratedMessage | BaseException]:
        for conversation in messages:
            (Path(self.started_dir) / conversation[-1].content).write_text("started")
        await asyncio.Event().wait()
        raise AssertionError("unreachable")
