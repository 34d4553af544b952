"""The OpenAI wire format: request bodies as validated pydantic models, and the response
bodies built from generator results."""

from __future__ import annotations

import typing as t

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rig_ray.generator.base import GeneratedMessage, GeneratedText
from rig_ray.generator.params import GenerateParams
from rig_ray.message import Message
from rig_ray.serve import response_format

MAX_ITEMS = 64
"""Most generations one request may ask for (completions: prompts x n)."""
VLLM_FIELDS = ("ignore_eos", "min_tokens", "repetition_penalty")
"""Sampling fields of vLLM's own server beyond OpenAI's (with `top_k`); they travel in
`GenerateParams.extra`, and only vLLM generators take them."""

_INT64 = 2**63


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    include_usage: bool = False
    """Send a last chunk with the usage of the whole request."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    """The served model's name, as /v1/models lists it."""
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    """vLLM-style extension: sample from the k most likely tokens (-1: all)."""
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=-_INT64, lt=_INT64)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    """Accepted and ignored, as are `metadata`, `store` and `service_tier` on chats."""
    logit_bias: dict[str, float] | None = None
    logprobs: t.Any = None
    ignore_eos: bool | None = None
    """vLLM extension: go on past the end-of-sequence token."""
    min_tokens: int | None = Field(None, ge=0)
    """vLLM extension: generate at least this many tokens."""
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    """vLLM extension: > 1 discourages repeated tokens."""

    @model_validator(mode="after")
    def _check_request(self) -> t.Self:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if any(not text for text in stops):
            raise ValueError("stop: a stop string must not be empty")
        if self.logit_bias:
            raise ValueError("logit_bias: not supported by this endpoint")
        if self.logprobs not in (None, False, 0):
            raise ValueError("logprobs: not supported by this endpoint")
        return self

    def to_params(self) -> GenerateParams:
        """The sampling settings of the request; unset ones keep the generator's."""
        return GenerateParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_tokens=self.max_tokens,
            stop=self.stop,
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            extra={
                name: getattr(self, name) for name in VLLM_FIELDS if getattr(self, name) is not None
            },
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: t.Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    """One message of a chat request; only text content is supported."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: t.Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[t.Any] | None = None
    function_call: t.Any = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _check_message(self) -> t.Self:
        if self.tool_calls or self.function_call is not None:
            raise ValueError("tool_calls / function_call: not supported by this endpoint")
        if self.content is None and self.role != "assistant":
            raise ValueError(f"content: required for {self.role} messages")
        return self

    def to_message(self) -> Message:
        content = self.content or ""
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role
        return Message(role=role, content=content, name=self.name, tool_call_id=self.tool_call_id)


class ChatCompletionRequest(_Request):
    """POST /v1/chat/completions."""

    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    """The newer name of max_tokens; wins when both are given."""
    tools: list[t.Any] | None = None
    tool_choice: t.Any = None
    functions: list[t.Any] | None = None
    response_format: dict[str, t.Any] | None = None
    top_logprobs: int | None = None
    modalities: list[str] | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, t.Any] | None = None
    store: bool | None = None
    service_tier: str | None = None

    @model_validator(mode="after")
    def _check_chat(self) -> t.Self:
        unsupported = {
            "tools": bool(self.tools),
            "tool_choice": self.tool_choice not in (None, "none", "auto"),
            "functions": bool(self.functions),
            "top_logprobs": bool(self.top_logprobs),
            "modalities": self.modalities not in (None, ["text"]),
        }
        for name, is_set in unsupported.items():
            if is_set:
                raise ValueError(f"{name}: not supported by this endpoint")
        response_format.schema_of(self.response_format)
        return self

    def to_messages(self) -> list[Message]:
        return [message.to_message() for message in self.messages]

    def to_params(self) -> GenerateParams:
        params = super().to_params()
        schema = response_format.schema_of(self.response_format)
        if schema is not None:
            params = params.model_copy(update={"json_schema": schema})
        if self.max_completion_tokens is not None:
            return params.model_copy(update={"max_tokens": self.max_completion_tokens})
        return params


class CompletionRequest(_Request):
    """POST /v1/completions; `prompt` is a text or a list of texts (token ids: not supported)."""

    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _check_completion(self) -> t.Self:
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt: give at least one prompt")
        if self.suffix:
            raise ValueError("suffix: not supported by this endpoint")
        if self.best_of not in (None, self.n):
            raise ValueError("best_of: only best_of == n is supported")
        if len(self.prompts) * self.n > MAX_ITEMS:
            raise ValueError(f"prompt: at most {MAX_ITEMS} generations (prompts x n) a request")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


# -- responses -----------------------------------------------------------------------------


# OpenAI's objects with every key OpenAI's own carry; those rig_ray has no value for are null.


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: None = None
    completion_tokens_details: None = None


class ChatMessageOut(BaseModel):
    role: t.Literal["assistant"] = "assistant"
    content: str
    refusal: None = None
    annotations: None = None
    audio: None = None
    function_call: None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: t.Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageOut | None
    service_tier: None = None
    system_fingerprint: None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: t.Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageOut | None
    system_fingerprint: None = None


class ModelCard(BaseModel):
    id: str
    object: t.Literal["model"] = "model"
    created: int
    owned_by: str = "rig_ray"


class ModelList(BaseModel):
    object: t.Literal["list"] = "list"
    data: list[ModelCard]


Result = GeneratedMessage | GeneratedText


def usage_of(results: t.Sequence[Result], per_prompt: int = 1) -> UsageOut | None:
    """Usage of a request: each prompt's tokens counted once (the first of its `per_prompt`
    choices), generated tokens of every choice; None when the generator reported none."""
    if not results or all(result.usage is None for result in results):
        return None
    prompt = sum(r.usage.input_tokens for r in results[::per_prompt] if r.usage is not None)
    completion = sum(r.usage.output_tokens for r in results if r.usage is not None)
    return UsageOut(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def chat_completion(
    request_id: str, created: int, model: str, results: t.Sequence[GeneratedMessage]
) -> ChatCompletion:
    choices = [
        ChatChoice(
            index=index,
            message=ChatMessageOut(content=result.message.content),
            finish_reason=result.stop_reason,
        )
        for index, result in enumerate(results)
    ]
    usage = usage_of(results, per_prompt=max(len(results), 1))  # n choices, one prompt
    return ChatCompletion(id=request_id, created=created, model=model, choices=choices, usage=usage)


def completion(
    request_id: str,
    created: int,
    request: CompletionRequest,
    results: t.Sequence[GeneratedText],
) -> Completion:
    """Choices in prompt order, `n` per prompt; with `echo`, each text starts with its prompt."""
    prompts = request.prompts
    choices = [
        CompletionChoice(
            index=index,
            text=(prompts[index // request.n] if request.echo else "") + result.text,
            finish_reason=result.stop_reason,
        )
        for index, result in enumerate(results)
    ]
    return Completion(
        id=request_id,
        created=created,
        model=request.model,
        choices=choices,
        usage=usage_of(results, request.n),
    )
