"""Ray fixtures: one small local Ray per test module, shut down when the module ends."""

from __future__ import annotations

import os
import typing as t
from pathlib import Path

import pytest

from tests.conftest import build_tiny_llama

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


@pytest.fixture(scope="session")
def other_tiny_llama_path(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Path:
    """A second tiny random Llama: smaller, seeded differently and with an untied output layer,
    so its replies do not just echo the prompt."""
    folder = tmp_path_factory.mktemp("other-tiny-llama")
    return build_tiny_llama(
        folder, smollm2_path, hidden_size=64, layers=1, seed=1, tie_word_embeddings=False
    )
