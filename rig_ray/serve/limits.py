"""What one request may ask of the endpoint: body size, messages, stop strings, choices, and
prompt tokens against the model's context.

The body, message, stop and `n` caps are checked by the ingress before a request goes
anywhere; the context is checked in the model's replica, where its tokenizer is, before the
request reaches the engine (so it never joins, or fails, a batch of other requests).
"""

from __future__ import annotations

import asyncio
import typing as t

from pydantic import BaseModel, ConfigDict, Field

from rig_ray.errors import ContextLengthError, ServeRequestError
from rig_ray.generator.base import DEFAULT_MAX_TOKENS, Generator
from rig_ray.generator.params import GenerateParams
from rig_ray.message import Message

if t.TYPE_CHECKING:
    from fastapi import Request

    from rig_ray.serve.wire import ChatCompletionRequest, CompletionRequest

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
LINGER_BYTES = 256 * 1024 * 1024
"""Most bytes of a refused body read and dropped before the 413 (see `discard_rest`)."""
LINGER_S = 30.0
"""Longest time spent on that."""


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
    body_timeout_s: float = Field(30.0, gt=0)
    """Longest time to receive a whole request body; past it, 408."""


def _bad(message: str, param: str) -> ServeRequestError:
    return ServeRequestError(message, status_code=400, code="invalid_value", param=param)


def too_large(limit: int) -> ServeRequestError:
    return ServeRequestError(
        f"Request body too large: this endpoint takes at most {limit} bytes.",
        status_code=413,
        code="request_too_large",
    )


async def read_body(request: Request, limits: RequestLimits) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass `max_body_bytes`:
    from its Content-Length before reading anything, else while reading. The rest of a refused
    body is read and dropped first (see `discard_rest`), so the client sees the 413. A body
    not read whole within `body_timeout_s` is refused with 408 (a slow client holds no slot
    of the ingress past it)."""
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            return await _read(request, limits.max_body_bytes)
    except TimeoutError:
        raise ServeRequestError(
            f"The request body was not received within {limits.body_timeout_s:g} s.",
            status_code=408,
            code="body_timeout",
        ) from None


async def _read(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        await discard_rest(request, int(declared))
        raise too_large(limit)
    chunks, size = [], 0
    more = True
    while more:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ServeRequestError(
                "The client closed the connection before the body was complete.",
                code="incomplete_body",
            )
        chunk = message.get("body", b"")
        more = bool(message.get("more_body", False))
        size += len(chunk)
        if size > limit:
            if more:
                await discard_rest(request, None)
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def discard_rest(request: Request, declared: int | None) -> None:
    """Read and drop what is left of a body that will be refused, as nginx's lingering close
    does: a server that answers and closes while the client still sends makes the client's
    TCP stack see a reset instead of the answer. Reads at most LINGER_BYTES for at most
    LINGER_S seconds; a body declared larger than that is not read at all."""
    if declared is not None and declared > LINGER_BYTES:
        return
    read = 0
    try:
        async with asyncio.timeout(LINGER_S):
            while read <= LINGER_BYTES:
                message = await request.receive()
                if message["type"] != "http.request":
                    return
                read += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return
    except TimeoutError:
        return


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


def context_error(error: ContextLengthError, param: str) -> ServeRequestError:
    """The 400 `context_length_exceeded` reply of a prompt past the context, in OpenAI's words
    ("messages" for a chat, "prompt" for a completion)."""
    what = "messages" if param == "messages" else "prompt"
    worded = ContextLengthError(
        window=error.window, prompt=error.prompt, completion=error.completion, what=what
    )
    return ServeRequestError(str(worded), code="context_length_exceeded", param=param)


async def check_context(
    generator: Generator,
    prompts: t.Sequence[t.Sequence[Message] | str],
    params: GenerateParams,
    *,
    param: str,
) -> None:
    """400 `context_length_exceeded` for the first prompt whose tokens, with `max_tokens`
    (the request's, else the generator's, else DEFAULT_MAX_TOKENS, which local engines then
    generate), pass the model's context. Generators that cannot count (remote APIs) are not
    checked, nor those that check each prompt as they render it (`checks_context`)."""
    if generator.checks_context:
        return
    window = await generator.context_window()
    if window is None:
        return
    completion = generator.params.merge_with(params).max_tokens or DEFAULT_MAX_TOKENS
    for prompt in prompts:
        count = await generator.count_prompt_tokens(prompt)
        if count is not None and count + completion > window:
            error = ContextLengthError(window=window, prompt=count, completion=completion)
            raise context_error(error, param)
