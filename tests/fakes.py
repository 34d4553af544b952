"""Small in-process generators for logic tests: no engine, no network, instant results.

Each one records the size of every batch it is called with in `calls` (one entry per
`generate_*` call) and the merged params of every item in `params_seen`, so tests can assert
one call per batch and see what params arrived. They are not registered as providers; tests
that want identifiers register them (see `FAKE_PROVIDERS`) and clean up after.
"""

from __future__ import annotations

import logging
import sys
import typing as t

from pydantic import Field, PrivateAttr

from rig_ray import GeneratedMessage, GeneratedText, GenerateParams, Generator, Message, Usage
from rig_ray.errors import GenerationError

Conversation = t.Sequence[Message]


def _usage(prompt: str, reply: str) -> Usage:
    return Usage(input_tokens=len(prompt.split()), output_tokens=len(reply.split()))


def _last_text(item: str | Conversation) -> str:
    if isinstance(item, str):
        return item
    return item[-1].content if item else ""


class _FakeGenerator(Generator):
    """Turns each item into a reply with `_reply`; an exception returned there goes in place."""

    _calls: list[int] = PrivateAttr(default_factory=list)
    _params_seen: list[GenerateParams] = PrivateAttr(default_factory=list)

    @property
    def calls(self) -> list[int]:
        """Batch sizes seen, one per `generate_*` call."""
        return self._calls

    @property
    def params_seen(self) -> list[GenerateParams]:
        """Merged params of every item seen, in order."""
        return self._params_seen

    def _reply(self, item: str | Conversation, params: GenerateParams) -> str | BaseException:
        raise NotImplementedError

    def _run(
        self, items: t.Sequence[str | Conversation], params: t.Sequence[GenerateParams]
    ) -> list[tuple[str, str | BaseException]]:
        merged = self.merged_params(params, len(items))
        self._calls.append(len(items))
        self._params_seen.extend(merged)
        results: list[tuple[str, str | BaseException]] = []
        for item, p in zip(items, merged, strict=True):
            prompt = _last_text(item)
            try:
                results.append((prompt, self._reply(item, p)))
            except Exception as error:  # a failing item never sinks the batch
                results.append((prompt, error))
        return results

    async def generate_messages(
        self, messages: t.Sequence[Conversation], params: t.Sequence[GenerateParams]
    ) -> list[GeneratedMessage | BaseException]:
        return [
            reply
            if isinstance(reply, BaseException)
            else GeneratedMessage(
                message=Message(role="assistant", content=reply),
                stop_reason="stop",
                usage=_usage(prompt, reply),
            )
            for prompt, reply in self._run(messages, params)
        ]

    async def generate_texts(
        self, texts: t.Sequence[str], params: t.Sequence[GenerateParams]
    ) -> list[GeneratedText | BaseException]:
        return [
            reply
            if isinstance(reply, BaseException)
            else GeneratedText(text=reply, stop_reason="stop", usage=_usage(prompt, reply))
            for prompt, reply in self._run(texts, params)
        ]


class FixedGenerator(_FakeGenerator):
    """Replies `text` to every item."""

    text: str = "fixed"

    def _reply(self, item: str | Conversation, params: GenerateParams) -> str:
        return self.text


class EchoGenerator(_FakeGenerator):
    """Replies with the input text, or the content of the conversation's last message."""

    def _reply(self, item: str | Conversation, params: GenerateParams) -> str:
        return _last_text(item)


class CallbackGenerator(_FakeGenerator):
    """Replies `callback(item, params)`: item is the text, or the conversation (list of Message).

    An exception the callback raises (or returns) becomes that item's result. The callback is
    left out of dumps and equality, so such a generator has no identifier.
    """

    callback: t.Callable[[t.Any, GenerateParams], str | BaseException] = Field(exclude=True)

    def _reply(self, item: str | Conversation, params: GenerateParams) -> str | BaseException:
        return self.callback(item, params)


class FailingGenerator(_FakeGenerator):
    """Echoes, but gives a `GenerationError` in place for items whose text contains `fail_on`."""

    fail_on: str = "FAIL"

    def _reply(self, item: str | Conversation, params: GenerateParams) -> str | BaseException:
        text = _last_text(item)
        if self.fail_on in text:
            return GenerationError(f"refused {text!r} (contains {self.fail_on!r})")
        return text


class LeakyGenerator(_FakeGenerator):
    """Echoes, but fails items containing `fail_on` with an error that quotes every secret it
    holds (as careless providers do: the key, the api_base URL, the extra headers), and says
    the same on its stdout, its stderr and a log record of its own, once per call."""

    fail_on: str = "FAIL"
    chatty: bool = True
    """Whether each call also prints and logs the confession."""

    def _run(
        self, items: t.Sequence[str | Conversation], params: t.Sequence[GenerateParams]
    ) -> list[tuple[str, str | BaseException]]:
        if self.chatty:
            said = self.confession()
            print(said, flush=True)
            print(said, file=sys.stderr, flush=True)
            logging.getLogger("tests.leaky").warning("%s", said)
        return super()._run(items, params)

    def confession(self) -> str:
        return (
            f"401 from {self.params.api_base}: invalid api key {self.api_key} "
            f"(headers {self.params.extra!r}, key {self.api_key!r})"
        )

    def _reply(self, item: str | Conversation, params: GenerateParams) -> str | BaseException:
        text = _last_text(item)
        if self.fail_on in text:
            return GenerationError(self.confession())
        return text


FAKE_PROVIDERS: dict[str, type[Generator]] = {
    "fixed": FixedGenerator,
    "echo": EchoGenerator,
    "failing": FailingGenerator,
    "leaky": LeakyGenerator,
}
"""Provider names to register the identifier-friendly fakes under (CallbackGenerator has none)."""
