"""Fixtures of the Ray tests (`local_ray` itself is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import build_tiny_llama


@pytest.fixture(scope="session")
def other_tiny_llama_path(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Path:
    """A second tiny random Llama: smaller, seeded differently and with an untied output layer,
    so its replies do not just echo the prompt."""
    folder = tmp_path_factory.mktemp("other-tiny-llama")
    return build_tiny_llama(
        folder, smollm2_path, hidden_size=64, layers=1, seed=1, tie_word_embeddings=False
    )
