"""The check every local backend passes with the real SmolLM2: greedy, it knows Paris."""

from __future__ import annotations

import rig_ray as rr


async def assert_knows_paris(generator: rr.Generator) -> rr.GeneratedText:
    """Ask as a chat and as a completion with a stop string; returns the completion."""
    chat = [[rr.Message(role="user", content="What is the capital of France?")]]
    [reply] = await generator.generate_messages(chat, [rr.GenerateParams()])
    assert isinstance(reply, rr.GeneratedMessage), reply
    assert "Paris" in reply.message.content
    assert reply.stop_reason == "stop"
    [completion] = await generator.generate_texts(
        ["The capital of France is"], [rr.GenerateParams(max_tokens=8, stop=["."])]
    )
    assert isinstance(completion, rr.GeneratedText), completion
    assert completion.text.strip() == "Paris"
    assert completion.stop_reason == "stop"
    return completion
