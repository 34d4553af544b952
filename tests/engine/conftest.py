"""The vLLM engines of tests/engine, shared by its modules and ended with the package.

Engines take tens of seconds to start on CPU. `tiny` serves the behaviour and load-and-unload tests;
`one_seat` (priority scheduling, one sequence at a time) is the second generator of the
two-generators load-and-unload test, which loads it beside `tiny`, and then serves the priority
tests as it is.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest

import rig_ray as rr
from tests.engine.vllm_support import ENGINE


@pytest.fixture(scope="package")
def tiny(tiny_llama_path: Path) -> t.Iterator[rr.VLLMGenerator]:
    """The tiny random Llama on vLLM, loaded."""
    pytest.importorskip("vllm")
    generator = rr.VLLMGenerator(model=str(tiny_llama_path), **ENGINE)
    yield generator.load()
    generator.unload()


@pytest.fixture(scope="package")
def one_seat(tiny_llama_path: Path) -> t.Iterator[rr.VLLMGenerator]:
    """The tiny Llama on vLLM with priority scheduling and one sequence at a time; loaded by
    whichever test uses it first."""
    pytest.importorskip("vllm")
    generator = rr.VLLMGenerator(
        model=str(tiny_llama_path),
        engine_args={"scheduling_policy": "priority", "max_num_seqs": 1},
        **ENGINE,
    )
    yield generator
    generator.unload()
