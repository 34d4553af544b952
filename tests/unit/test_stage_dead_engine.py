"""Which results tell a batch stage that its engine died (and its actor must exit)."""

from __future__ import annotations

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
