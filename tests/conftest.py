"""Shared fixtures: offline settings, the embedded model, and a tiny random-weight Llama."""

from __future__ import annotations

import os
import shutil
import time
import typing as t
from pathlib import Path

import pytest

from rig_ray.generator import registry
from tests.fakes import FAKE_PROVIDERS

# No hub is reachable here: fail fast instead of retrying downloads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# vLLM's CPU engines take a 1 GiB KV cache (plenty for the tests' small models and short
# prompts) whatever the machine's memory: left to a share of it (0.3 x 24 GiB here), each
# engine's start spent about 20 s allocating its cache. Engines in GPU tests ignore it.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The converted embedded SmolLM2 folder (converted once into the rig_ray cache)."""
    from rig_ray.embedded import embedded_model_path

    return embedded_model_path()


def build_tiny_llama(
    folder: Path,
    tokenizer_from: Path,
    *,
    hidden_size: int = 128,
    layers: int = 2,
    seed: int = 0,
    tie_word_embeddings: bool = True,
) -> Path:
    """Save a random-weight Llama (bf16) with `tokenizer_from`'s tokenizer files in `folder`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model.save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_from / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Path:
    """A 2-layer Llama with random weights and SmolLM2's tokenizer, built at test time."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm2_path)


@pytest.fixture
def fake_providers() -> t.Iterator[None]:
    """Register the fakes as providers (fixed!, echo!, failing!, leaky!) for one test, then
    restore."""
    saved = dict(registry._providers)
    for name, generator_cls in FAKE_PROVIDERS.items():
        registry.register_generator(name, generator_cls)
    yield
    registry._providers.clear()
    registry._providers.update(saved)


RAY_CPUS = 2
_shared: dict[str, t.Any] = {"address": None, "serving": False}


def shared_ray() -> t.Any:
    """The session's local Ray (2 CPUs, never one started elsewhere: address "local"), started
    on first use. A module that started a cluster of its own (or shut Ray down) gets a new one;
    so does one that finds CPUs still held by actors an earlier module left, unless Serve
    runs on it (tests/serve keeps its apps up for the whole package)."""
    import ray

    ours = ray.is_initialized() and _shared["address"] == _address()
    if ours and (_shared["serving"] or _idle(ray)):
        return ray
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, logging_level="warning")
    _shared["address"] = _address()
    return ray


def _address() -> str | None:
    import ray

    return ray.get_runtime_context().gcs_address if ray.is_initialized() else None


def _idle(ray: t.Any, wait_s: float = 5.0) -> bool:
    """Whether every CPU is free again (actors that were just killed take a moment)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) >= RAY_CPUS - 1e-6:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="session")
def ray_session() -> t.Iterator[None]:
    """Shuts the shared local Ray down when the session ends (if it still runs)."""
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized() and _shared["address"] == _address():
        ray.shutdown()


@pytest.fixture(scope="module")
def local_ray(ray_session: None) -> t.Iterator[t.Any]:
    """The local Ray shared by tests/batch, tests/ray and tests/serve (2 CPUs; actors in the
    tests take fractions of a CPU). Modules that need a cluster of their own shut it down and
    start theirs; the next module that asks for this one gets a fresh shared Ray."""
    yield shared_ray()


@pytest.fixture
def every_cpu_held() -> t.Iterator[None]:
    """Actors holding every CPU of the cluster, for as long as the test runs (one more is
    started for CPUs that free up once the first holds its share: actors of earlier tests
    that were just killed)."""
    import ray

    @ray.remote
    class Hog:
        def ready(self) -> bool:
            return True

    hogs: list[t.Any] = []
    deadline = time.monotonic() + 60
    while (free := ray.available_resources().get("CPU", 0.0)) > 1e-3:
        assert time.monotonic() < deadline, f"{free} CPUs still free"
        hogs.append(Hog.options(num_cpus=free).remote())  # type: ignore[attr-defined]
        ray.get(hogs[-1].ready.remote(), timeout=120)
        while ray.available_resources().get("CPU", 0.0) > free - 1e-3:  # the report lags
            assert time.monotonic() < deadline, "Ray never reported the held CPUs"
            time.sleep(0.1)
    yield
    for hog in hogs:
        ray.kill(hog)
