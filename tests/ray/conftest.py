"""Ray fixtures: one small local Ray per test module, shut down when the module ends."""

from __future__ import annotations

import os
import shutil
import typing as t
from pathlib import Path

import pytest

from rig_ray.generator import registry
from tests.conftest import TOKENIZER_FILES
from tests.fakes import FAKE_PROVIDERS

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="module")
def local_ray() -> t.Iterator[t.Any]:
    """`ray.init(num_cpus=2)` for this module; actors in the tests take fractions of a CPU."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield ray
    ray.shutdown()


@pytest.fixture
def fake_providers() -> t.Iterator[None]:
    """Register the fakes as providers (fixed!, echo!, failing!) for one test."""
    saved = dict(registry._providers)
    for name, generator_cls in FAKE_PROVIDERS.items():
        registry.register_generator(name, generator_cls)
    yield
    registry._providers.clear()
    registry._providers.update(saved)


@pytest.fixture(scope="session")
def other_tiny_llama_path(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Path:
    """A second tiny random Llama: smaller, seeded differently and with an untied output layer."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("other-tiny-llama")
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,  # its replies do not just echo the prompt,
    )
    torch.manual_seed(1)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model.save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(smollm2_path / name, folder / name)
    return folder
