"""Generators for the endpoint tests beyond tests/fakes.py: a slow one (to fill the queue), a
chat-only one, and a callback that writes back the params it got. They travel to the Serve
replicas by value, like any class defined outside rig_ray."""

from __future__ import annotations

import asyncio
import json
import typing as t

from rig_ray import GeneratedMessage, GenerateParams, Generator, Message


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
