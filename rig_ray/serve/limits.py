"""What one request may ask of the endpoint: body size, messages, stop strings, choices, and
prompt tokens against the model's context.

The body, message, stop and `n` caps are checked by the ingress before a request goes
anywhere; the context is checked in the model's replica, where its tokenizer is, before the
request reaches the engine (so it never joins, or fails, a batch of other requests).
"""

from __future__ import annotations

import typing as t

from pydantic import BaseModel, ConfigDict, Field

from rig_ray.errors import ServeRequestError
from rig_ray.generator.base import GenerateParams, Generator
from rig_ray.message import Message

if t.TYPE_CHECKING:
    from fastapi import Request

    from rig_ray.serve.wire import ChatCompletionRequest, CompletionRequest

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


class RequestLimits(BaseModel):
    """Caps on what one request may send (each a `rig-ray serve` option)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1)
    """Largest request body; past it the answer is 413 and the rest is not read."""
    max_messages: int = Field(1024, ge=1)
    """Most messages in one chat request."""
    max_stop: int = Field(16, ge=0)
    """Most stop strings in one request."""
    max_stop_length: int = Field(256, ge=1)
    """Longest stop string, in characters."""
    max_n: int = Field(16, ge=1)
    """Most choices (`n`) one request may ask for."""


def _bad(message: str, param: str) -> ServeRequestError:
    return ServeRequestError(message, status_code=400, code="invalid_value", param=param)


def too_large(limit: int) -> ServeRequestError:
    return ServeRequestError(
        f"Request body too large: this endpoint takes at most {limit} bytes.",
        status_code=413,
        code="request_too_large",
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass `limit` bytes: from
    its Content-Length before reading anything, else while reading, with no further read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def check_request(body: ChatCompletionRequest | CompletionRequest, limits: RequestLimits) -> None:
    """400, naming the field, for a request past the message, stop or `n` caps."""
    messages = getattr(body, "messages", None)
    if messages is not None and len(messages) > limits.max_messages:
        raise _bad(f"messages: at most {limits.max_messages} messages a request", "messages")
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    if len(stops) > limits.max_stop:
        raise _bad(f"stop: at most {limits.max_stop} stop strings", "stop")
    if any(len(stop) > limits.max_stop_length for stop in stops):
        raise _bad(f"stop: each stop string at most {limits.max_stop_length} characters", "stop")
    if body.n > limits.max_n:
        raise _bad(f"n: at most {limits.max_n} choices a request", "n")


def context_exceeded(window: int, prompt: int, completion: int | None, param: str) -> str | None:
    """OpenAI's message for a prompt (+ completion) past the context, or None when it fits."""
    what = "messages" if param == "messages" else "prompt"
    if completion is None:
        if prompt < window:
            return None
        return (
            f"This model's maximum context length is {window} tokens. However, your {what} "
            f"resulted in {prompt} tokens. Please reduce the length of the {what}."
        )
    if prompt + completion <= window:
        return None
    return (
        f"This model's maximum context length is {window} tokens. However, you requested "
        f"{prompt + completion} tokens ({prompt} in the {what}, {completion} in the "
        f"completion). Please reduce the length of the {what} or completion."
    )


async def check_context(
    generator: Generator,
    prompts: t.Sequence[t.Sequence[Message] | str],
    params: GenerateParams,
    *,
    param: str,
) -> None:
    """400 `context_length_exceeded` for the first prompt whose tokens, with `max_tokens`
    (the request's, else the generator's), pass the model's context. Generators that cannot
    count (remote APIs) are not checked."""
    window = await generator.context_window()
    if window is None:
        return
    completion = generator.params.merge_with(params).max_tokens
    for prompt in prompts:
        count = await generator.count_prompt_tokens(prompt)
        message = None if count is None else context_exceeded(window, count, completion, param)
        if message is not None:
            raise ServeRequestError(message, code="context_length_exceeded", param=param)
