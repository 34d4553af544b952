"""Which results tell a batch stage that its engine died (and its actor must exit), and a
generator whose dead engine is left to its owner."""

from __future__ import annotations

import asyncio

import pytest

from rig_ray.batch.stage import _engine_died
from rig_ray.errors import EngineDeadError, GenerationError


class EngineDeadError_(Exception):  # vLLM's own class goes by this name
    pass


EngineDeadError_.__name__ = "EngineDeadError"


def test_ours_and_vllms_engine_dead_errors_count_and_others_do_not() -> None:
    assert _engine_died(EngineDeadError("gone"))
    assert issubclass(EngineDeadError, GenerationError)
    assert _engine_died(EngineDeadError_("vllm's"))
    assert not _engine_died(GenerationError("one bad item"))
    assert not _engine_died(TimeoutError("slow"))
    assert not _engine_died("text")


def test_a_generator_left_to_its_owner_never_restarts_a_dead_engine_in_place() -> None:
    from rig_ray.errors import EngineDeadError
    from rig_ray.generator.vllm_ import VLLMGenerator

    class DeadEngine:
        errored = True

    generator = VLLMGenerator(model="m")
    generator._engine, generator._loop = DeadEngine(), object()  # type: ignore[assignment]
    generator.leave_a_dead_engine_to_its_owner()
    with pytest.raises(EngineDeadError, match="died"):
        asyncio.run(generator._running())  # no load attempted: this machine has no model "m"
    assert generator.engine_died
