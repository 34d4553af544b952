"""Serve renders each prompt once on vLLM: the context check counts the rendering that goes to
the engine (no second rendering to count it), and a prompt past the context, with its
`max_tokens` or the engine's default, is the 400 `context_length_exceeded`.

One engine (the tiny random Llama, max_model_len 256) for the module; the replica's own
checks run in process on it, with its renderer spied on."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest

import rig_ray as rr
from rig_ray.errors import ContextLengthError, ServeRequestError
from rig_ray.generator.base import DEFAULT_MAX_TOKENS, GenerateParams
from rig_ray.message import Message
from rig_ray.serve.limits import check_context, context_error

pytest.importorskip("vllm")
pytestmark = pytest.mark.engine

WINDOW = 512


@pytest.fixture(scope="module")
def strict(tiny_llama_path: Path) -> t.Iterator[rr.VLLMGenerator]:
    generator = rr.VLLMGenerator(
        model=str(tiny_llama_path), enforce_eager=True, max_model_len=WINDOW
    )
    generator.refuse_past_context()  # what a Serve replica does
    yield generator.load()
    generator.unload()


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
    prompt = chat(300)  # ~300 tokens: fits alone, not with 300 more
    result = await admit_and_generate(strict, prompt, GenerateParams(max_tokens=300))
    assert isinstance(result, ContextLengthError)
    assert result.window == WINDOW and result.completion == 300
    assert WINDOW - 300 < result.prompt < WINDOW
    reply = context_error(result, "messages")
    assert isinstance(reply, ServeRequestError) and reply.status_code == 400
    assert reply.code == "context_length_exceeded" and reply.param == "messages"
    assert f"maximum context length is {WINDOW} tokens" in str(reply)
    assert "300 in the completion" in str(reply)


async def test_an_unset_max_tokens_counts_as_the_engines_default(
    strict: rr.VLLMGenerator,
) -> None:
    prompt = chat(300)  # ~300 tokens + 256 > 512
    result = await admit_and_generate(strict, prompt, GenerateParams())
    assert isinstance(result, ContextLengthError)
    assert result.completion == DEFAULT_MAX_TOKENS
    streamed = strict.stream_message(prompt, GenerateParams())
    with pytest.raises(ContextLengthError):
        [c async for c in streamed]


async def test_a_prompt_past_the_context_alone_says_so(strict: rr.VLLMGenerator) -> None:
    result = await admit_and_generate(strict, chat(1000), GenerateParams(max_tokens=1))
    assert isinstance(result, ContextLengthError)
    assert result.completion is None and result.prompt > WINDOW
    [text] = await strict.generate_texts(["hello " * 1000], [GenerateParams(max_tokens=1)])
    assert isinstance(text, ContextLengthError)
