"""Chats: conversations before and after generation, and the pipelines that generate them."""

from __future__ import annotations

import copy
import typing as t

from pydantic import Field

from rig_ray.errors import (
    GenerationError,
    InvalidMessageError,
    ParseError,
    ParseRetriesExhaustedError,
)
from rig_ray.generator.base import GeneratedMessage, GeneratedText, Generator
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.registry import identifier_of
from rig_ray.message import Message, MessageLike, fill_templates
from rig_ray.model import Model
from rig_ray.pipeline import Pipeline
from rig_ray.result import Result

DEFAULT_MAX_DEPTH = 3
"""How many times `until_parsed_as` asks again before giving up."""


class Chat(Result):
    """A conversation: the messages sent, and the messages generated after them."""

    messages: list[Message]
    """The conversation before generation."""
    generated: list[Message] = Field(default_factory=list)
    """What the generator added."""

    def record(self, result: GeneratedMessage | GeneratedText | BaseException) -> bool:
        """`Result.record`, and the reply becomes `generated`."""
        if not super().record(result):
            return False
        self.generated = [t.cast(GeneratedMessage, result).message]
        return True

    @property
    def all(self) -> list[Message]:
        """messages + generated."""
        return [*self.messages, *self.generated]

    @property
    def last(self) -> Message:
        """The last message of the whole conversation."""
        return self.all[-1]

    @property
    def conversation(self) -> str:
        """The conversation as readable text, one `[role]: content` block per message."""
        return "\n\n".join(f"[{m.role}]: {m.content}" for m in self.all)

    def restart(
        self, *, generator: Generator | None = None, include_all: bool = False
    ) -> ChatPipeline:
        """A pipeline from this chat's messages (and generated ones, with include_all)."""
        messages = self.all if include_all else self.messages
        pipeline = ChatPipeline(self._require_generator(generator), messages)
        return pipeline.meta(**self.metadata)

    def fork(
        self, messages: MessageLike | t.Sequence[MessageLike], *, include_all: bool = False
    ) -> ChatPipeline:
        """A pipeline from this chat's messages (and generated ones, with include_all) plus
        `messages`."""
        return self.restart(include_all=include_all).add(messages)

    def continue_(self, messages: MessageLike | t.Sequence[MessageLike]) -> ChatPipeline:
        """A pipeline from the whole conversation, generated messages included, plus `messages`."""
        return self.fork(messages, include_all=True)


class ChatPipeline(Pipeline):
    """Messages plus settings, ready to generate one chat or a batch of them."""

    def __init__(
        self,
        generator: Generator,
        messages: MessageLike | t.Sequence[MessageLike] | None = None,
        params: GenerateParams | None = None,
    ):
        super().__init__(generator, params)
        self.messages: list[Message] = Message.fit_many(messages) if messages else []
        self.parse_models: tuple[type[Model], ...] = ()
        self.max_depth = DEFAULT_MAX_DEPTH

    def clone(self) -> t.Self:
        twin = super().clone()
        twin.messages = [m.model_copy(deep=True) for m in self.messages]
        return twin

    def add(self, messages: MessageLike | t.Sequence[MessageLike]) -> t.Self:
        """A pipeline with `messages` appended."""
        twin = self.clone()
        twin.messages.extend(Message.fit_many(messages))
        return twin

    def fork(self, messages: MessageLike | t.Sequence[MessageLike]) -> t.Self:
        """A separate pipeline that continues with `messages`; this one is left as it was."""
        return self.add(messages)

    def apply(
        self,
        values: t.Mapping[str, t.Any] | None = None,
        /,
        *,
        strict: bool = False,
        **kwargs: t.Any,
    ) -> t.Self:
        """Fill `$name` fields in the last message (see `Message.apply`)."""
        if not self.messages:
            raise GenerationError("apply needs a message: this pipeline has none")
        twin = self.clone()
        twin.messages[-1] = twin.messages[-1].apply(values, strict=strict, **kwargs)
        return twin

    def apply_to_all(
        self,
        values: t.Mapping[str, t.Any] | None = None,
        /,
        *,
        strict: bool = False,
        **kwargs: t.Any,
    ) -> t.Self:
        """Fill `$name` fields in every message; strict checks the fields across all of them."""
        twin = self.clone()
        contents = fill_templates(
            [m.content for m in self.messages], {**(values or {}), **kwargs}, strict=strict
        )
        twin.messages = [
            m.model_copy(update={"content": c, "parts": []})
            for m, c in zip(twin.messages, contents, strict=True)
        ]
        return twin

    def until_parsed_as(self, *models: type[Model], max_depth: int = DEFAULT_MAX_DEPTH) -> t.Self:
        """Ask again, with the parse error, until the reply holds every one of `models`.

        Each round sends the chats still unparsed in one batch; after `max_depth` rounds the
        chat fails with `ParseRetriesExhaustedError`.
        """
        if not models or max_depth < 0:
            raise ValueError("until_parsed_as needs at least one model and max_depth >= 0")
        twin = self.clone()
        twin.parse_models = (*self.parse_models, *models)
        twin.max_depth = max_depth
        return twin

    async def run(self) -> Chat:
        """Generate one chat. A `skip`ped failure is returned marked failed: there is no other."""
        (chat,) = await self._run([[]], None, keep_skipped=True)
        return chat

    async def run_many(self, count: int) -> list[Chat]:
        """Generate `count` chats from the same messages, in one batch."""
        return await self._run([[] for _ in range(count)], None)

    async def run_batch(
        self,
        many: t.Sequence[MessageLike | t.Sequence[MessageLike]],
        params: GenerateParams | t.Sequence[GenerateParams | None] | None = None,
    ) -> list[Chat]:
        """Generate one chat per item of `many` (messages appended to this pipeline's), in one
        batch; `params` is one GenerateParams for all, or one per item."""
        if isinstance(many, str | Message | t.Mapping):
            raise InvalidMessageError(many, "run_batch takes a sequence with one item per chat")
        return await self._run([Message.fit_many(item) for item in many], params)

    async def _run(
        self, additions: list[list[Message]], params: t.Any, *, keep_skipped: bool = False
    ) -> list[Chat]:
        conversations = [[*self.messages, *added] for added in additions]
        item_params = self.item_params(params, len(conversations))
        results = await self.generate(self.generator.generate_messages, conversations, item_params)
        generator_id = identifier_of(self.generator)
        chats = [
            self._chat(conv, result, generator_id)
            for conv, result in zip(conversations, results, strict=True)
        ]
        if self.parse_models:
            await _ParseLoop(self, chats, item_params).run()
        await self.notify(chats)
        return self.settle(chats, keep_failed=keep_skipped)

    def _chat(
        self,
        messages: list[Message],
        result: GeneratedMessage | BaseException,
        generator_id: str | None,
    ) -> Chat:
        # Each chat gets its own copies: editing one never changes its siblings or the pipeline.
        chat = Chat(
            messages=[m.model_copy(deep=True) for m in messages],
            metadata=copy.deepcopy(self.metadata),
            generator=self.generator,
            generator_id=generator_id,
        )
        chat.record(result)
        return chat


class _ParseLoop:
    """`until_parsed_as`: parse every reply; ask again, in one batch per round, for the rest."""

    def __init__(self, pipeline: ChatPipeline, chats: list[Chat], params: list[GenerateParams]):
        self.pipeline = pipeline
        self.chats = chats
        self.params = params
        self.retries: dict[int, list[Message]] = {i: [] for i in range(len(chats))}
        self.examples = " ".join(m.xml_example() for m in pipeline.parse_models)

    async def run(self) -> None:
        pending = self._unparsed(range(len(self.chats)))
        for depth in range(1, self.pipeline.max_depth + 1):
            if not pending:
                return
            conversations = [self._retry_conversation(i, error) for i, error in pending.items()]
            params = [self.params[i] for i in pending]
            results = await self.pipeline.generate(
                self.pipeline.generator.generate_messages, conversations, params
            )
            for index, result in zip(pending, results, strict=True):
                self.chats[index].record(result)
                self.chats[index].extra["parse_retries"] = depth
            pending = self._unparsed(pending)
        names = [m.__name__ for m in self.pipeline.parse_models]
        for index, error in pending.items():
            exhausted = ParseRetriesExhaustedError(
                names, max_depth=self.pipeline.max_depth, last_error=str(error)
            )
            chat = self.chats[index]  # keeps its last reply: nothing produced is lost
            chat.failed, chat.error = True, exhausted

    def _unparsed(self, indices: t.Iterable[int]) -> dict[int, ParseError]:
        """The chats (by index) whose reply does not parse, with why; failed ones are left."""
        problems = {}
        for index in indices:
            chat = self.chats[index]
            if chat.failed:
                continue
            try:
                chat.last.parse_many(*self.pipeline.parse_models)
            except ParseError as error:
                problems[index] = error
        return problems

    def _retry_conversation(self, index: int, error: ParseError) -> list[Message]:
        chat = self.chats[index]
        ask = f"Your reply could not be read: {error}. Reply again, using {self.examples}."
        self.retries[index] += [chat.last, Message(role="user", content=ask)]
        return [*chat.messages, *self.retries[index]]
