"""The generator interface: results and the `Generator` base class."""

from __future__ import annotations

import copy
import typing as t

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rig_ray.errors import GenerationError
from rig_ray.generator import rounds
from rig_ray.generator.params import GenerateParams
from rig_ray.message import Message, MessageLike

if t.TYPE_CHECKING:
    from rig_ray.chat import ChatPipeline
    from rig_ray.completion import CompletionPipeline
    from rig_ray.generator.rounds import ProgressCallback, Prompt

StopReason = t.Literal["stop", "length", "content_filter", "tool_calls", "unknown"]
"""Why generation ended: a stop sequence or end of turn, the token limit, a content filter, a
tool call, or something the engine did not say."""

_STOP_REASON_ALIASES: dict[str, StopReason] = {
    "stop": "stop",
    "eos": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "max_tokens": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "tool_use": "tool_calls",
}

DEFAULT_MAX_TOKENS = 256
"""Token limit that local engines use when `max_tokens` is unset (vLLM's own default is 16)."""


def to_stop_reason(raw: str | None) -> StopReason:
    """Map an engine's finish reason onto a `StopReason`."""
    return _STOP_REASON_ALIASES.get((raw or "").lower(), "unknown")


class Usage(BaseModel):
    """Token counts of one generation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_tokens: int = Field(0, ge=0)
    """Tokens in the prompt."""
    output_tokens: int = Field(0, ge=0)
    """Tokens generated."""
    total_tokens: int = Field(0, ge=0)
    """input_tokens + output_tokens, unless the engine said otherwise."""

    @model_validator(mode="before")
    @classmethod
    def _fill_total(cls, values: t.Any) -> t.Any:
        if isinstance(values, dict) and not values.get("total_tokens"):
            total = (values.get("input_tokens") or 0) + (values.get("output_tokens") or 0)
            values = {**values, "total_tokens": total}
        return values

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


class _Generated(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stop_reason: StopReason = "unknown"
    """Why generation ended."""
    usage: Usage | None = None
    """Token counts, when the engine reports them."""
    extra: dict[str, t.Any] = Field(default_factory=dict)
    """Engine-specific details (request ids, metrics, ...)."""


class GeneratedMessage(_Generated):
    """One generated chat turn."""

    message: Message
    """The assistant's reply."""

    @property
    def text(self) -> str:
        return self.message.content


class GeneratedText(_Generated):
    """One generated text completion."""

    text: str
    """The generated text, without the prompt."""


class GeneratedChunk(BaseModel):
    """A piece of a streamed reply: the text new since the previous chunk.

    The last chunk of a stream carries `stop_reason` and `usage`; earlier ones leave them None.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str = ""
    """Text produced since the previous chunk (may be empty on the last one)."""
    stop_reason: StopReason | None = None
    """Why generation ended; set on the last chunk only."""
    usage: Usage | None = None
    """Token counts of the whole reply; set on the last chunk only."""
    extra: dict[str, t.Any] | None = None
    """Engine-specific details (request id, metrics), on the last chunk."""

    @classmethod
    def whole(cls, result: GeneratedMessage | GeneratedText) -> GeneratedChunk:
        """One chunk holding a whole reply, as streams of non-streaming generators end."""
        return cls(
            text=result.text, stop_reason=result.stop_reason, usage=result.usage, extra=result.extra
        )


Messages = t.Sequence[t.Sequence[Message]]


class Generator(BaseModel, rounds.SyncGenerate):
    """Something that completes chats and/or texts, in batches.

    A generator is an immutable configuration (its fields, which `to_identifier` writes out)
    plus whatever engine `load()` builds. Subclasses implement `generate_messages`,
    `generate_texts` or both; each takes a batch and returns one result or one exception per
    item, so a bad item never sinks the batch.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    honours_json_schema: t.ClassVar[bool] = False
    """Whether the engine can constrain replies to `GenerateParams.json_schema`."""

    model: str = Field(min_length=1)
    """What the provider runs: a model name, path or route."""
    api_key: str | None = Field(None, repr=False)
    """Credential for remote providers; never written into identifiers."""
    params: GenerateParams = Field(default_factory=GenerateParams)
    """Defaults for every generation; per-call params override them."""

    batches_continuously: t.ClassVar[bool] = False
    """Whether the engine batches concurrent calls itself (vLLM's async engine, remote APIs),
    so a server sends it each request at once instead of grouping requests first."""
    checks_context: t.ClassVar[bool] = False
    """Whether `refuse_past_context()` makes the engine check each prompt against the context
    as it renders it (so a server need not render it a second time to count it)."""

    def takes_a_gpu_where_there_is_one(self) -> bool:
        """Whether its engine runs on a GPU wherever it finds one (vLLM's; transformers' with
        no device, or a CUDA one): on a Ray cluster with GPUs, an actor holding it reserves
        one unless told otherwise (see `rig_ray.cluster.placement`)."""
        return False

    def measures_free_gpu_memory(self) -> bool:
        """Whether its engine sizes itself from the drop in the GPU's free memory while it
        loads (vLLM's KV cache): engines on shares of one GPU must then load in turn (see
        `rig_ray.cluster.gpu_turns`)."""
        return False

    def spreads_over_its_gpus(self) -> bool:
        """Whether one engine spreads itself over every GPU its process is given
        (transformers' `device_map`): its actor may then take several GPUs itself."""
        return False

    def __eq__(self, other: object) -> bool:
        """Same class and settings; the api_key, never written into identifiers, is not compared.

        (pydantic's own __eq__ would also compare private state, which holds the engine.)"""
        if type(other) is not type(self):
            return NotImplemented
        return self._settings() == t.cast(Generator, other)._settings()

    def __hash__(self) -> int:
        return hash((type(self), repr(self._settings())))

    def _settings(self) -> dict[str, t.Any]:
        return self.model_dump(exclude={"api_key"})

    def _fields(self) -> dict[str, t.Any]:
        return {name: getattr(self, name) for name in type(self).model_fields}

    def __reduce__(self) -> tuple[t.Any, ...]:
        # Pickles (and Ray ships) the configuration only; the copy loads its own engine.
        return (_rebuild, (type(self), self._fields()))

    def __deepcopy__(self, memo: dict[int, t.Any] | None = None) -> Generator:
        return _rebuild(type(self), copy.deepcopy(self._fields(), memo))

    def __copy__(self) -> Generator:
        return _rebuild(type(self), self._fields())

    def model_copy(
        self, *, update: t.Mapping[str, t.Any] | None = None, deep: bool = False
    ) -> t.Self:
        """A new, unloaded generator with `update` applied (validated); engines are never shared."""
        fields = {**self._fields(), **(update or {})}
        return t.cast(t.Self, _rebuild(type(self), copy.deepcopy(fields) if deep else fields))

    @property
    def is_loaded(self) -> bool:
        """Whether the engine is in memory; generators without one are always loaded."""
        return True

    @property
    def engine_died(self) -> bool:
        """Whether the loaded engine has died (its processes gone): the next call starts it
        again where the generator may, or fails."""
        return False

    def load(self) -> t.Self:
        """Bring the engine into memory; idempotent. Returns self for chaining."""
        return self

    def unload(self) -> t.Self:
        """Release the engine and its memory; idempotent, and `load()` works again after."""
        return self

    async def generate_messages(
        self, messages: Messages, params: t.Sequence[GenerateParams]
    ) -> t.Sequence[GeneratedMessage | BaseException]:
        """Generate the next turn for each conversation, with the matching params."""
        raise NotImplementedError(f"{type(self).__name__} does not generate chat messages")

    async def generate_texts(
        self, texts: t.Sequence[str], params: t.Sequence[GenerateParams]
    ) -> t.Sequence[GeneratedText | BaseException]:
        """Generate a completion of each text, with the matching params."""
        raise NotImplementedError(f"{type(self).__name__} does not generate text completions")

    async def context_window(self) -> int | None:
        """The most tokens prompt + completion may hold, or None where unknown (remote APIs)."""
        return None

    async def capacity(self) -> int | None:
        """Requests the engine runs at once (vLLM's max_num_seqs), or None where it has no such
        limit or it is unknown; callers keep about this many in flight to fill the engine."""
        return None

    async def count_prompt_tokens(self, prompt: t.Sequence[Message] | str) -> int | None:
        """Tokens of a prompt as the engine would see it (a conversation rendered with the chat
        template and the generation prompt, or a text), or None where it cannot be counted."""
        return None

    def refuse_past_context(self) -> None:
        """From now on, fail each item whose prompt tokens plus its `max_tokens` (or the
        engine's default) pass the context with a ContextLengthError, counted from the
        rendering that goes to the engine, instead of generating up to the context's end.
        Only generators with `checks_context` do it; for others this does nothing."""

    async def stream_message(
        self, messages: t.Sequence[Message], params: GenerateParams | None = None
    ) -> t.AsyncIterator[GeneratedChunk]:
        """The reply to one conversation, chunk by chunk as the engine makes it.

        Generators that cannot stream yield the whole reply as one chunk. Closing the iterator
        early (or cancelling its task) stops the generation where the engine allows it.
        """
        async for chunk in self._stream_prompt(list(messages), params):
            yield chunk

    async def stream_text(
        self, text: str, params: GenerateParams | None = None
    ) -> t.AsyncIterator[GeneratedChunk]:
        """The completion of one text, chunk by chunk as the engine makes it (see
        `stream_message`)."""
        async for chunk in self._stream_prompt(text, params):
            yield chunk

    async def _stream_prompt(
        self, prompt: str | list[Message], params: GenerateParams | None
    ) -> t.AsyncIterator[GeneratedChunk]:
        """One text or conversation, streamed: what streaming generators override. Here, the
        whole reply as one chunk."""
        each = [params or GenerateParams()]
        if isinstance(prompt, str):
            texts = await self.generate_texts([prompt], each)
            yield GeneratedChunk.whole(_raise_if_error(texts[0]))
        else:
            replies = await self.generate_messages([prompt], each)
            yield GeneratedChunk.whole(_raise_if_error(replies[0]))

    def chat(
        self,
        messages: MessageLike | t.Sequence[MessageLike] | None = None,
        params: GenerateParams | None = None,
    ) -> ChatPipeline:
        """A chat pipeline on this generator: messages are Messages, OpenAI dicts or strs."""
        from rig_ray.chat import ChatPipeline

        return ChatPipeline(self, messages, params)

    def complete(self, text: str = "", params: GenerateParams | None = None) -> CompletionPipeline:
        """A completion pipeline on this generator, from the prompt `text`."""
        from rig_ray.completion import CompletionPipeline

        return CompletionPipeline(self, text, params)

    def to_identifier(self, params: GenerateParams | None = None) -> str:
        """The identifier string that `get_generator` turns back into an equal generator."""
        from rig_ray.generator.registry import get_identifier

        return get_identifier(self, params)

    def merged_params(self, params: t.Sequence[GenerateParams], count: int) -> list[GenerateParams]:
        """This generator's params overlaid with one per-item params for each of `count` items."""
        if len(params) != count:
            raise GenerationError(f"got {count} inputs but {len(params)} params; give one each")
        return [self.params.merge_with(p) for p in params]

    async def agenerate(
        self,
        inputs: t.Sequence[Prompt],
        num_generations: int = 1,
        *,
        params: GenerateParams | None = None,
        progress_callback: ProgressCallback | None = None,
    ) -> list[list[GeneratedText | GeneratedMessage]]:
        """`num_generations` results per input (strs, or conversations).

        One batched engine call holds every input repeated `num_generations` times; a failed
        item raises a GenerationError naming its input. `generate` is the blocking twin.
        """
        return await rounds.agenerate(
            self, inputs, num_generations, params=params, progress_callback=progress_callback
        )


_T = t.TypeVar("_T")


def _raise_if_error(result: _T | BaseException) -> _T:
    if isinstance(result, BaseException):
        raise result
    return result


def _rebuild(cls: type[Generator], fields: dict[str, t.Any]) -> Generator:
    return cls(**fields)
