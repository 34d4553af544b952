"""Chats and completions end to end on real transformers models: the tiny random Llama, and the
embedded SmolLM2 for a parse loop that can succeed."""

from __future__ import annotations

import itertools
import typing as t
from pathlib import Path

import pytest
from pydantic import PrivateAttr

import rig_ray as rr

pytestmark = pytest.mark.engine


class Answer(rr.Model):
    content: str


class CountingTransformers(rr.TransformersGenerator):
    """The real transformers generator, recording the size of every chat batch it is given."""

    _batches: list[int] = PrivateAttr(default_factory=list)

    async def generate_messages(self, messages, params):  # type: ignore[no-untyped-def]
        self._batches.append(len(messages))
        return await super().generate_messages(messages, params)


@pytest.fixture(scope="module")
def tiny(tiny_llama_path: Path) -> t.Iterator[rr.TransformersGenerator]:
    generator = rr.get_generator(f"transformers!{tiny_llama_path},max_tokens=6,temperature=0")
    yield generator.load()
    generator.unload()


async def test_chat_end_to_end_with_context_and_json_round_trip(tiny):
    pipeline = (
        tiny.chat([{"role": "system", "content": "You are $who."}, "Tell me about $topic."])
        .apply_to_all(strict=True, who="terse", topic="boats")
        .meta(run="e2e")
        .with_(max_tokens=4)
    )
    chats = await pipeline.run_many(3)

    for chat in chats:
        assert [m.content for m in chat.messages] == ["You are terse.", "Tell me about boats."]
        assert chat.last.role == "assistant" and chat.generated == [chat.last]
        assert chat.stop_reason in ("length", "stop")
        assert chat.usage.input_tokens > 5
        assert 1 <= chat.usage.output_tokens <= 4
        assert chat.metadata == {"run": "e2e"}
        assert chat.generator_id == tiny.to_identifier()

    restored = rr.Chat.model_validate_json(chats[0].model_dump_json())
    assert restored.generator == tiny  # rebuilt from its identifier, unloaded
    assert restored.generator is not tiny and not restored.generator.is_loaded
    assert (restored.usage, restored.stop_reason, restored.metadata) == (
        chats[0].usage,
        chats[0].stop_reason,
        chats[0].metadata,
    )
    assert restored.all == chats[0].all

    follow_up = await chats[0].continue_("And about trains?").run()
    assert [m.role for m in follow_up.messages] == ["system", "user", "assistant", "user"]
    assert follow_up.metadata == {"run": "e2e"}


async def test_completion_end_to_end(tiny):
    completions = (
        await tiny.complete("Once upon a $when").apply(when="time").run_batch([" a", " b"])
    )
    assert [c.text for c in completions] == ["Once upon a time a", "Once upon a time b"]
    for completion in completions:
        assert completion.generated and completion.usage.output_tokens >= 1
        assert completion.all == completion.text + completion.generated


async def test_parse_loop_exhausts_on_a_model_that_never_complies(tiny_llama_path):
    generator = CountingTransformers(model=str(tiny_llama_path), params={"max_tokens": 5})
    try:
        pipeline = generator.chat("Answer in <answer></answer> tags.").with_(temperature=0)
        with pytest.raises(rr.ParseRetriesExhaustedError, match="Answer did not parse after 2"):
            await pipeline.until_parsed_as(Answer, max_depth=2).run_many(3)
        assert generator._batches == [3, 3, 3]

        chats = await pipeline.until_parsed_as(Answer, max_depth=1).catch().run_many(2)
        for chat in chats:
            assert chat.failed and isinstance(chat.error, rr.ParseRetriesExhaustedError)
            assert chat.generated and chat.generated[0].role == "assistant"  # the reply is kept
            assert chat.extra["parse_retries"] == 1
            assert chat.usage.output_tokens > 5  # both attempts are counted
    finally:
        generator.unload()


async def test_parse_loop_on_smollm2_resends_only_unparsed_chats(smollm2_path):
    generator = CountingTransformers(model=str(smollm2_path), params={"max_tokens": 32})
    prompts = [
        "Write an XML element named answer that contains the number 4.",
        "Repeat exactly: <answer>Paris</answer>",
        "What is 2+2? Reply in one short sentence.",
    ]
    try:
        chats = await (
            generator.chat()
            .with_(temperature=0)
            .until_parsed_as(Answer, max_depth=2)
            .catch(rr.ParseRetriesExhaustedError)
            .run_batch(prompts)
        )
    finally:
        generator.unload()

    batches = generator._batches
    assert batches[0] == 3 and len(batches) <= 3
    assert all(later <= earlier for earlier, later in itertools.pairwise(batches))
    parsed = [chat for chat in chats if not chat.failed]
    assert parsed, "SmolLM2 writes the XML element it is asked for"
    for chat in parsed:
        answer = chat.last.parse(Answer)
        assert chat.last.parts[0].model == answer
        assert chat.last.content[chat.last.parts[0].slice_] == answer.to_pretty_xml()
    # Each retry round sent exactly the chats still unparsed after the round before.
    retried = [chat.extra.get("parse_retries", 0) for chat in chats]
    assert batches[1:] == [sum(r >= depth for r in retried) for depth in range(1, len(batches))]
