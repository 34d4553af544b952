"""`stream: true` replies as server-sent events.

Generators return whole replies, so a stream is sent once the reply is complete: per choice a
role chunk, one content chunk and a finish chunk with its finish_reason; then, when asked
(`stream_options.include_usage`), a chunk with the usage; then `data: [DONE]`. Clients that
read streams work unchanged; the first token simply arrives with the last.
"""

from __future__ import annotations

import json
import typing as t

from rig_ray.generator.base import GeneratedMessage, GeneratedText
from rig_ray.serve.wire import CompletionRequest, usage_of

DONE = "data: [DONE]\n\n"


def _event(payload: dict[str, t.Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _usage_chunk(
    base: dict[str, t.Any], results: t.Sequence[GeneratedMessage | GeneratedText], per_prompt: int
) -> str:
    usage = usage_of(results, per_prompt)
    return _event({**base, "choices": [], "usage": usage.model_dump() if usage else None})


def chat_events(
    request_id: str,
    created: int,
    model: str,
    results: t.Sequence[GeneratedMessage],
    *,
    include_usage: bool,
) -> list[str]:
    """The events of a streamed chat completion."""
    base: dict[str, t.Any] = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, str], finish_reason: str | None = None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _event({**base, "choices": [choice], **extra})

    events = []
    for index, result in enumerate(results):
        events.append(chunk(index, {"role": "assistant", "content": ""}))
        if result.message.content:
            events.append(chunk(index, {"content": result.message.content}))
        events.append(chunk(index, {}, result.stop_reason))
    if include_usage:
        events.append(_usage_chunk(base, results, max(len(results), 1)))  # one prompt
    return [*events, DONE]


def completion_events(
    request_id: str, created: int, request: CompletionRequest, results: t.Sequence[GeneratedText]
) -> list[str]:
    """The events of a streamed text completion (choices in prompt order, `n` per prompt)."""
    base: dict[str, t.Any] = {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": request.model,
    }
    extra = {"usage": None} if request.include_usage else {}

    def chunk(index: int, text: str, finish_reason: str | None = None) -> str:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return _event({**base, "choices": [choice], **extra})

    prompts = request.prompts
    events = []
    for index, result in enumerate(results):
        text = (prompts[index // request.n] if request.echo else "") + result.text
        if text:
            events.append(chunk(index, text))
        events.append(chunk(index, "", result.stop_reason))
    if request.include_usage:
        events.append(_usage_chunk(base, results, request.n))
    return [*events, DONE]
