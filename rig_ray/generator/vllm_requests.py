"""Requests on vLLM's async engine (`AsyncLLM`): render, submit, collect or stream.

Everything here runs on the engine's own event loop (see `engine_loop`). Each prompt is its own
engine request, so the engine's scheduler batches every request in flight, whoever sent it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import typing as t
import uuid

from rig_ray.errors import ContextLengthError, EngineDeadError, GenerationError
from rig_ray.generator.base import (
    GeneratedChunk,
    GeneratedMessage,
    GeneratedText,
    Usage,
    to_stop_reason,
)
from rig_ray.message import Message

Prompt = str | list[dict[str, t.Any]]
"""A text to complete, or a conversation (OpenAI message dicts) to render with the chat template."""

Result = GeneratedMessage | GeneratedText


def engine_dead_error() -> type[BaseException]:
    from vllm.v1.engine.exceptions import EngineDeadError

    return EngineDeadError


def new_request_id() -> str:
    return f"rig_ray-{uuid.uuid4().hex}"


async def render(engine: t.Any, prompt: Prompt, *, capped: bool = True) -> t.Any:
    """The engine input for one prompt: a conversation goes through the model's chat template in
    the engine's renderer (as `LLM.chat` does), a text through its tokenizer. Uncapped, a prompt
    longer than the context is rendered whole instead of refused (for counting it)."""
    renderer = engine.renderer
    if isinstance(prompt, str):
        tok_params = renderer.default_cmpl_tok_params
        if not capped:
            tok_params = dataclasses.replace(tok_params, max_total_tokens=None)
        (engine_input,) = await renderer.render_cmpl_async([{"prompt": prompt}], tok_params)
        return engine_input
    from vllm.renderers import ChatParams
    from vllm.utils.mistral import is_mistral_tokenizer

    chat_params = ChatParams(
        chat_template_kwargs={
            "add_generation_prompt": True,
            "continue_final_message": False,
            "tools": None,
            "tokenize": is_mistral_tokenizer(renderer.tokenizer),
        }
    )
    tok_params = renderer.default_chat_tok_params.with_kwargs(add_special_tokens=False)
    if not capped:
        tok_params = dataclasses.replace(tok_params, max_total_tokens=None)
    _, (engine_input,) = await renderer.render_chat_async([prompt], chat_params, tok_params)
    return engine_input


async def render_checked(engine: t.Any, prompt: Prompt, sampling: t.Any, *, strict: bool) -> t.Any:
    """`render(engine, prompt)`; a prompt past the context fails with a ContextLengthError,
    and, when `strict`, so does one whose tokens plus `sampling.max_tokens` pass it."""
    from vllm.exceptions import VLLMValidationError

    window = int(engine.model_config.max_model_len)
    try:
        engine_input = await render(engine, prompt)
    except VLLMValidationError as error:
        if error.parameter not in ("input_tokens", "input_text"):
            raise
        counted = await count_tokens(engine, prompt)  # only for the message
        raise ContextLengthError(window=window, prompt=counted, completion=None) from None
    tokens = len(engine_input.get("prompt_token_ids") or ())
    completion = sampling.max_tokens
    if strict and completion is not None and tokens + completion > window:
        raise ContextLengthError(window=window, prompt=tokens, completion=completion)
    return engine_input


async def count_tokens(engine: t.Any, prompt: Prompt) -> int:
    """Tokens of the prompt as the engine will see it, however long."""
    engine_input = await render(engine, prompt, capped=False)
    return len(engine_input["prompt_token_ids"])


async def complete(
    engine: t.Any, prompt: Prompt, sampling: t.Any, *, strict: bool = False, priority: int = 0
) -> list[Result]:
    """Run one request to its end: one result per sample (`sampling.n` of them); `priority`
    orders it in an engine that schedules by priority (lower first)."""
    from vllm.sampling_params import RequestOutputKind

    sampling.output_kind = RequestOutputKind.FINAL_ONLY
    engine_input = await render_checked(engine, prompt, sampling, strict=strict)
    final = None
    async for output in engine.generate(
        engine_input, sampling, new_request_id(), **_priority(priority)
    ):
        final = output
    if final is None:
        raise GenerationError("vLLM ended the request without an output")
    return [
        _result(prompt, completion.text, _details(final, completion, len(completion.token_ids)))
        for completion in sorted(final.outputs, key=lambda c: c.index)
    ]


async def stream(
    engine: t.Any, prompt: Prompt, sampling: t.Any, *, strict: bool = False, priority: int = 0
) -> t.AsyncIterator[GeneratedChunk]:
    """Run one request, yielding its new text as the engine makes it; the last chunk carries the
    stop reason, token counts and metrics."""
    from vllm.sampling_params import RequestOutputKind

    sampling.output_kind = RequestOutputKind.DELTA
    engine_input = await render_checked(engine, prompt, sampling, strict=strict)
    generated = 0
    try:
        async for output in engine.generate(
            engine_input, sampling, new_request_id(), **_priority(priority)
        ):
            completion = output.outputs[0]
            generated += len(completion.token_ids)
            if output.finished:
                details = _details(output, completion, generated)
                yield GeneratedChunk(text=completion.text, **details)
            elif completion.text:
                yield GeneratedChunk(text=completion.text)
    except engine_dead_error() as error:
        raise EngineDeadError(f"the vLLM engine died: {error}") from error


def merge_chunks(chunks: list[GeneratedChunk]) -> GeneratedChunk:
    """Consecutive chunks of one stream as one: their texts joined, the last one's ending."""
    last = chunks[-1]
    text = "".join(chunk.text for chunk in chunks)
    return last.model_copy(update={"text": text})


async def complete_all(
    engine: t.Any,
    jobs: t.Sequence[tuple[Prompt, t.Any]],
    *,
    strict: bool = False,
    priority: int = 0,
) -> list[list[Result] | BaseException]:
    """Run every (prompt, sampling) job at once; a rejected job gets its error in place.

    A dead engine fails the whole call: no later request could succeed on it.
    """
    outcomes = await asyncio.gather(
        *(
            complete(engine, prompt, sampling, strict=strict, priority=priority)
            for prompt, sampling in jobs
        ),
        return_exceptions=True,
    )
    dead = engine_dead_error()
    for outcome in outcomes:
        if isinstance(outcome, dead):
            raise EngineDeadError(f"the vLLM engine died: {outcome}") from outcome
        if isinstance(outcome, asyncio.CancelledError):
            raise outcome
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome
    return list(outcomes)


def _priority(priority: int) -> dict[str, int]:
    """`generate`'s priority argument: only when it is not the default, so engines (and
    fakes) without one keep working."""
    return {"priority": priority} if priority else {}


def _result(prompt: Prompt, text: str, details: dict[str, t.Any]) -> Result:
    if isinstance(prompt, str):
        return GeneratedText(text=text, **details)
    return GeneratedMessage(message=Message(role="assistant", content=text), **details)


def _details(output: t.Any, completion: t.Any, generated: int) -> dict[str, t.Any]:
    return {
        "stop_reason": to_stop_reason(completion.finish_reason),
        "usage": Usage(input_tokens=len(output.prompt_token_ids or []), output_tokens=generated),
        "extra": {
            "request_id": output.request_id,
            "metrics": _metrics(output),
            "num_cached_tokens": output.num_cached_tokens,
            "matched_stop": completion.stop_reason,
        },
    }


def _metrics(output: t.Any) -> dict[str, t.Any] | None:
    metrics = getattr(output, "metrics", None)
    if metrics is None:
        return None
    is_dataclass = dataclasses.is_dataclass(metrics) and not isinstance(metrics, type)
    values = dataclasses.asdict(metrics) if is_dataclass else vars(metrics)
    return {k: v for k, v in values.items() if isinstance(v, int | float | str | bool)}
