"""TransformersGenerator on real models: a tiny random Llama and the embedded SmolLM2."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

import rig_ray as rr
from rig_ray.generator.params import GenerateParams
from tests.engine.capital_of_france import assert_knows_paris
from tests.engine.loop_ticks import ticks_during

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def tiny(tiny_llama_path: Path) -> rr.TransformersGenerator:
    generator = rr.TransformersGenerator(model=str(tiny_llama_path), device="cpu")
    yield generator.load()
    generator.unload()


def count_generate_calls(generator: rr.TransformersGenerator, monkeypatch: pytest.MonkeyPatch):
    """Spy on the real model's generate; returns the list of batch sizes it was called with."""
    model = generator._model
    real = model.generate
    sizes: list[int] = []

    def spy(*args, **kwargs):
        sizes.append(int(kwargs["input_ids"].shape[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    return sizes


async def test_one_generate_call_per_batch(tiny, monkeypatch):
    sizes = count_generate_calls(tiny, monkeypatch)
    texts = ["Hello", "A much longer prompt with many more words in it", "x", "Once upon"]
    params = [GenerateParams(max_tokens=5, temperature=0)] * len(texts)
    results = await tiny.generate_texts(texts, params)
    assert sizes == [4]
    tokenizer = tiny._tokenizer
    for text, result in zip(texts, results, strict=True):
        assert isinstance(result, rr.GeneratedText)
        assert result.usage.input_tokens == len(tokenizer(text)["input_ids"])
        assert 1 <= result.usage.output_tokens <= 5
        if result.usage.output_tokens == 5:
            assert result.stop_reason == "length"


async def test_per_item_params_group_into_one_call_each(tiny, monkeypatch):
    sizes = count_generate_calls(tiny, monkeypatch)
    params = [
        GenerateParams(max_tokens=3, temperature=0),
        GenerateParams(max_tokens=7, temperature=0),
        GenerateParams(max_tokens=3, temperature=0),
    ]
    results = await tiny.generate_texts(["a", "b", "c"], params)
    assert sorted(sizes) == [1, 2]
    for result, p in zip(results, params, strict=True):
        assert result.usage.output_tokens == p.max_tokens or result.stop_reason == "stop"


async def test_greedy_and_seeded_sampling_repeat(tiny):
    greedy = [GenerateParams(max_tokens=8, temperature=0)]
    first = await tiny.generate_texts(["The sea"], greedy)
    second = await tiny.generate_texts(["The sea"], greedy)
    assert first[0].text == second[0].text
    seeded = [GenerateParams(max_tokens=8, temperature=1.0, seed=5)]
    a = await tiny.generate_texts(["The sea"], seeded)
    b = await tiny.generate_texts(["The sea"], seeded)
    assert a[0].text == b[0].text


async def test_chat_batch_uses_the_chat_template(tiny):
    conversations = [
        [rr.Message(role="user", content="Hi")],
        [rr.Message(role="system", content="Be brief."), rr.Message(role="user", content="Yo")],
    ]
    results = await tiny.generate_messages(conversations, [GenerateParams(max_tokens=4)] * 2)
    for result in results:
        assert isinstance(result, rr.GeneratedMessage)
        assert result.message.role == "assistant"
    # The template adds the im_start/assistant scaffolding, so the prompt is longer than the text.
    assert results[0].usage.input_tokens > len(tiny._tokenizer("Hi")["input_ids"]) + 3


async def test_event_loop_runs_while_the_model_generates(tiny):
    ticks = await ticks_during(
        tiny.generate_texts(["Tick"] * 8, [GenerateParams(max_tokens=48, temperature=0)] * 8)
    )
    assert ticks >= 5


async def test_from_obj_wraps_a_built_model(tiny_llama_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path)
    generator = rr.TransformersGenerator.from_obj(
        model, tokenizer, params=GenerateParams(max_tokens=3)
    )
    assert generator.is_loaded
    assert generator.model == str(tiny_llama_path)
    results = await generator.generate_texts(["abc"], [GenerateParams()])
    assert results[0].usage.output_tokens <= 3
    assert rr.get_generator(generator.to_identifier()) == generator


async def test_unload_releases_the_weights_and_load_works_again(tiny_llama_path):
    generator = rr.TransformersGenerator(model=str(tiny_llama_path), device="cpu").load()
    weights = weakref.ref(next(generator._model.parameters()))
    model = weakref.ref(generator._model)
    assert weights() is not None
    generator.unload()
    generator.unload()  # idempotent
    gc.collect()
    assert model() is None and weights() is None
    assert not generator.is_loaded
    results = await generator.generate_texts(["again"], [GenerateParams(max_tokens=2)])
    assert isinstance(results[0], rr.GeneratedText)
    assert generator.is_loaded
    generator.unload()


def test_missing_model_folder_is_a_clear_error(tmp_path):
    generator = rr.TransformersGenerator(model=str(tmp_path / "no-such-model"))
    with pytest.raises(rr.ModelNotAvailableError, match="no-such-model"):
        generator.load()


async def test_smollm2_knows_the_capital_of_france(smollm2_path):
    generator = rr.get_generator("transformers!smollm2-135m,temperature=0,max_tokens=24")
    await assert_knows_paris(generator)
    generator.unload()


def test_decode_counts_the_end_token_but_never_padding(tiny) -> None:
    tokenizer = tiny._tokenizer
    ends = tiny._end_ids()
    words = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    # Ran to the limit: every token is output.
    assert tiny._decode(words, 3, [], ends).usage.output_tokens == len(words)
    assert tiny._decode(words, 3, [], ends).stop_reason == "length"
    # Ended on its end token, then padded up to a longer row: the end token counts once.
    ended = tiny._decode([*words, eos, eos, eos], 3, [], ends)
    assert (ended.stop_reason, ended.usage.output_tokens) == ("stop", len(words) + 1)
    # Cut by a stop string: padding after it is not output, whatever the batch's longest row.
    short = tiny._decode([*words], 3, [" world"], ends)
    padded = tiny._decode([*words, eos, eos], 3, [" world"], ends)
    assert short.text == padded.text == "hello"
    assert short.usage.output_tokens == padded.usage.output_tokens == len(words)


async def test_top_k_minus_one_means_all_tokens(tiny) -> None:
    params = [GenerateParams(max_tokens=3, temperature=0.7, top_k=-1, seed=1)]
    [result] = await tiny.generate_texts(["abc"], params)
    assert isinstance(result, rr.GeneratedText)


def test_auto_dtype_runs_what_this_cpu_computes_natively(tiny, tiny_llama_path) -> None:
    import torch

    from rig_ray.generator.cpu import runs_natively

    expected = torch.bfloat16 if runs_natively("bfloat16") else torch.float32
    assert tiny._model.dtype == expected  # the checkpoint is bf16; auto picks for the CPU
    explicit = rr.TransformersGenerator(model=str(tiny_llama_path), device="cpu", dtype="bfloat16")
    try:
        assert explicit.load()._model.dtype == torch.bfloat16  # an explicit dtype always wins
    finally:
        explicit.unload()
