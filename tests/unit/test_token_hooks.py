"""The generators' context and prompt-token hooks, which the endpoint checks prompts with."""

from __future__ import annotations

from pathlib import Path

import pytest

import rig_ray as rr
from rig_ray.generator.transformers_ import TransformersGenerator


class Plain(rr.Generator):
    pass


async def test_the_base_class_counts_nothing() -> None:
    generator = Plain(model="m")
    assert not Plain.batches_continuously
    assert await generator.context_window() is None
    assert await generator.count_prompt_tokens("text") is None
    assert await generator.count_prompt_tokens([rr.Message(role="user", content="hi")]) is None


@pytest.mark.engine
async def test_transformers_counts_with_its_tokenizer_and_chat_template(
    tiny_llama_path: Path,
) -> None:
    generator = TransformersGenerator(model=str(tiny_llama_path), device="cpu")
    assert await generator.context_window() is None  # nothing loaded yet
    assert await generator.count_prompt_tokens("hi") is None
    generator.load()
    try:
        assert await generator.context_window() == 1024  # the model's max_position_embeddings
        tokenizer = generator._tokenizer
        text = "The capital of France is"
        assert await generator.count_prompt_tokens(text) == len(tokenizer(text)["input_ids"])
        conversation = [rr.Message(role="user", content="Hello there")]
        rendered = tokenizer.apply_chat_template(
            [m.to_openai() for m in conversation], tokenize=False, add_generation_prompt=True
        )
        expected = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        assert await generator.count_prompt_tokens(conversation) == expected > 5
        # the usage of a real generation counts the same prompt tokens
        [result] = await generator.generate_messages(
            [conversation], [rr.GenerateParams(max_tokens=1)]
        )
        assert isinstance(result, rr.GeneratedMessage) and result.usage is not None
        assert result.usage.input_tokens == expected
    finally:
        generator.unload()
