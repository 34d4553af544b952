"""Serve renders each prompt once on vLLM: the context check counts the rendering that goes to
the engine (no second rendering to count it), and a prompt past the context, with its
`max_tokens` or the engine's default, is the 400 `context_length_exceeded`.

On the package's engine (`tiny`, tests/engine/conftest.py: the tiny random Llama,
max_model_len 1024), so no engine start of its own: the replica's own checks run in process
on it, with its renderer spied on and its context made strict as a Serve replica makes it
(for each test only)."""

from __future__ import annotations

import typing as t

import pytest

import rig_ray as rr
from rig_ray.errors import ContextLengthError, ServeRequestError
from rig_ray.generator.base import DEFAULT_MAX_TOKENS
from rig_ray.generator.params import GenerateParams
from rig_ray.message import Message
from rig_ray.serve.limits import check_context, context_error

pytest.importorskip("vllm")
pytestmark = pytest.mark.engine

WINDOW = 1024
"""max_model_len of the engine (ENGINE in tests/engine/vllm_support.py)."""


@pytest.fixture
def strict(tiny: rr.VLLMGenerator) -> t.Iterator[rr.VLLMGenerator]:
    """The module's engine, refusing prompts past its context as a Serve replica has it do
    (`refuse_past_context()`), for this test only."""
    assert tiny.max_model_len == WINDOW
    tiny.refuse_past_context()
    try:
        yield tiny
    finally:
        tiny._strict_context = False  # the module's other tests get vLLM's own behaviour


def spy_renders(generator: rr.VLLMGenerator, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every rendering of a prompt by the engine's renderer: "chat" or "text"."""
    renderer = generator._engine.renderer
    calls: list[str] = []
    chat, text = renderer.render_chat_async, renderer.render_cmpl_async

    async def render_chat(*args: t.Any, **kwargs: t.Any) -> t.Any:
        calls.append("chat")
        return await chat(*args, **kwargs)

    async def render_text(*args: t.Any, **kwargs: t.Any) -> t.Any:
        calls.append("text")
        return await text(*args, **kwargs)

    monkeypatch.setattr(renderer, "render_chat_async", render_chat)
    monkeypatch.setattr(renderer, "render_cmpl_async", render_text)
    return calls


def chat(words: int) -> list[Message]:
    return [Message(role="user", content="hello " * words)]


async def admit_and_generate(
    generator: rr.VLLMGenerator, prompt: list[Message], params: GenerateParams
) -> t.Any:
    """What a replica does with a chat request: its context check, then the generation."""
    await check_context(generator, [prompt], params, param="messages")
    [result] = await generator.generate_messages([prompt], [params])
    return result


async def test_a_served_prompt_is_rendered_once(
    strict: rr.VLLMGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy_renders(strict, monkeypatch)
    result = await admit_and_generate(strict, chat(3), GenerateParams(max_tokens=4))
    assert isinstance(result, rr.GeneratedMessage)
    assert calls == ["chat"]
    chunks = [c async for c in strict.stream_message(chat(3), GenerateParams(max_tokens=4))]
    assert chunks and calls == ["chat", "chat"]


async def test_prompt_and_max_tokens_past_the_context_fail_with_the_counts(
    strict: rr.VLLMGenerator,
) -> None:
    prompt = chat(600)  # ~600 tokens: fits alone, not with 600 more
    result = await admit_and_generate(strict, prompt, GenerateParams(max_tokens=600))
    assert isinstance(result, ContextLengthError)
    assert result.window == WINDOW and result.completion == 600
    assert WINDOW - 600 < result.prompt < WINDOW
    reply = context_error(result, "messages")
    assert isinstance(reply, ServeRequestError) and reply.status_code == 400
    assert reply.code == "context_length_exceeded" and reply.param == "messages"
    assert f"maximum context length is {WINDOW} tokens" in str(reply)
    assert "600 in the completion" in str(reply)


async def test_an_unset_max_tokens_counts_as_the_engines_default(
    strict: rr.VLLMGenerator,
) -> None:
    prompt = chat(800)  # ~800 tokens + 256 > 1024
    result = await admit_and_generate(strict, prompt, GenerateParams())
    assert isinstance(result, ContextLengthError)
    assert result.completion == DEFAULT_MAX_TOKENS
    streamed = strict.stream_message(prompt, GenerateParams())
    with pytest.raises(ContextLengthError):
        [c async for c in streamed]


async def test_a_prompt_past_the_context_alone_says_so(strict: rr.VLLMGenerator) -> None:
    result = await admit_and_generate(strict, chat(2000), GenerateParams(max_tokens=1))
    assert isinstance(result, ContextLengthError)
    assert result.completion is None and result.prompt > WINDOW
    [text] = await strict.generate_texts(["hello " * 2000], [GenerateParams(max_tokens=1)])
    assert isinstance(text, ContextLengthError)
