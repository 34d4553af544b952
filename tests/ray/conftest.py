"""Fixtures of the Ray tests (`local_ray` itself is in tests/conftest.py)."""

from __future__ import annotations

import contextlib
import typing as t
from pathlib import Path

import pytest

from tests.conftest import build_tiny_llama
from tests.serve.support import free_port


@pytest.fixture(scope="session")
def other_tiny_llama_path(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Path:
    """A second tiny random Llama: smaller, seeded differently and with an untied output layer,
    so its replies do not just echo the prompt."""
    folder = tmp_path_factory.mktemp("other-tiny-llama")
    return build_tiny_llama(
        folder, smollm2_path, hidden_size=64, layers=1, seed=1, tie_word_embeddings=False
    )


@contextlib.contextmanager
def own_ray_and_serve(**resources: t.Any) -> t.Iterator[t.Any]:
    """A local Ray of the caller's own (`resources` go to `ray.init`) with Serve on a free
    port; both shut down on the way out."""
    import ray
    from ray import serve

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", include_dashboard=False, logging_level="warning", **resources)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        yield ray
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_and_serve() -> t.Iterator[t.Any]:
    """A local Ray of the module's own (2 CPUs) with Serve on a free port, for tests that
    watch actors and replicas end."""
    with own_ray_and_serve(num_cpus=2) as ray:
        yield ray
