"""Generators for the placement and lifecycle tests: one reports where it runs, one notes
every unload in a file, one raises an engine-dead error once."""

from __future__ import annotations

import json
import os
import typing as t
from pathlib import Path

from pydantic import Field, PrivateAttr

from rig_ray import GeneratedMessage, GenerateParams, Message
from rig_ray.cluster.placement import placed_engine_args
from rig_ray.errors import EngineDeadError
from tests.fakes import EchoGenerator


class WhereAmI(EchoGenerator):
    """Replies, as JSON, with what its actor got: the placement group's bundles and strategy,
    the actor's own GPU ids and CUDA_VISIBLE_DEVICES, and those of one task per GPU bundle
    (what vLLM's Ray executor starts for each tensor-parallel worker)."""

    tensor_parallel_size: int = Field(1, ge=1)
    engine_args: dict[str, t.Any] = Field(default_factory=dict)
    on_a_gpu_where_found: bool = True
    """As vLLM's engine: runs on a GPU wherever it finds one (so its actor reserves one on a
    cluster with GPUs, `num_gpus` unset)."""

    def takes_a_gpu_where_there_is_one(self) -> bool:
        return self.on_a_gpu_where_found

    async def generate_messages(
        self, messages: t.Sequence[t.Sequence[Message]], params: t.Sequence[GenerateParams]
    ) -> list[GeneratedMessage | BaseException]:
        report = json.dumps(await where_am_i())
        return [
            GeneratedMessage(message=Message(role="assistant", content=report), stop_reason="stop")
            for _ in messages
        ]


async def where_am_i() -> dict[str, t.Any]:
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = ray.util.get_current_placement_group()
    report: dict[str, t.Any] = {
        "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "bundles": None,
        "strategy": None,
        "workers": [],
        "vllm_fitted": placed_engine_args({"tensor_parallel_size": 2}, on_cpu=False),
    }
    if group is None:
        return report
    report["bundles"] = group.bundle_specs
    report["strategy"] = ray.util.placement_group_table(group)["strategy"]
    worker = ray.remote(num_cpus=0, num_gpus=1)(_worker_report)
    refs = [
        worker.options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=index
            )
        ).remote()
        for index, bundle in enumerate(group.bundle_specs)
        if bundle.get("GPU")
    ]
    report["workers"] = [await ref for ref in refs]
    return report


def _worker_report() -> dict[str, t.Any]:
    import ray

    return {
        "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "node_id": ray.get_runtime_context().get_node_id(),
    }


class NotesUnload(EchoGenerator):
    """Echoes; each unload of a loaded engine appends `unload <pid>` to the file `log`, and
    each load `load <pid>`."""

    log: str
    _up: bool = PrivateAttr(False)

    @property
    def is_loaded(self) -> bool:
        return self._up

    def load(self) -> t.Self:
        if not self._up:
            self._up = True
            _note(self.log, "load")
        return self

    def unload(self) -> t.Self:
        if self._up:
            self._up = False
            _note(self.log, "unload")
        return self


class EngineDiesOnce(NotesUnload):
    """Like NotesUnload; the first batch that finds no `marker` file creates it and gets an
    EngineDeadError for every item, as a generator whose engine process died."""

    marker: str
    raises: bool = False
    """Raise the error from the call, rather than return it for each item."""

    async def generate_messages(
        self, messages: t.Sequence[t.Sequence[Message]], params: t.Sequence[GenerateParams]
    ) -> list[GeneratedMessage | BaseException]:
        if not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            if self.raises:
                raise EngineDeadError("the engine process died")
            return [EngineDeadError("the engine process died") for _ in messages]
        return await super().generate_messages(messages, params)


def _note(log: str, what: str) -> None:
    with open(log, "a") as file:
        file.write(f"{what} {os.getpid()}\n")


def notes(log: Path) -> list[tuple[str, int]]:
    """The (event, pid) lines a NotesUnload wrote, in order."""
    if not log.exists():
        return []
    return [
        (kind, int(pid))
        for kind, pid in (line.split() for line in log.read_text().split("\n") if line)
    ]


class HoldsGroupGpus(EchoGenerator):
    """As vLLM's Ray executor: `load()` starts one worker actor per GPU bundle of its actor's
    placement group, and `unload()` ends them with `ray.kill` without waiting, then waits as
    the vLLM generator does (`group_gpus.await_free`). The group's free GPUs before load,
    while loaded and once unload returns go to the file `log`, one JSON line per unload."""

    log: str
    tensor_parallel_size: int = Field(1, ge=1)
    _workers: list[t.Any] = PrivateAttr(default_factory=list)
    _seen: dict[str, t.Any] = PrivateAttr(default_factory=dict)
    _before: t.Any = PrivateAttr(None)

    def load(self) -> t.Self:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from rig_ray.cluster import group_gpus

        if self._workers:
            return self
        before = group_gpus.free_now()
        assert before is not None, "not in a placement group with GPUs"
        group = ray.util.get_current_placement_group()
        assert group is not None
        worker = ray.remote(num_cpus=0, num_gpus=1)(_GpuWorker)
        self._workers = [
            worker.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, index)
            ).remote()
            for index, bundle in enumerate(group.bundle_specs)
            if bundle.get("GPU")
        ]
        ray.get([w.ready.remote() for w in self._workers])
        loaded = group_gpus.free_now()
        self._seen = {"before": before.free, "loaded": loaded.free if loaded else None}
        self._before = before
        return self

    def unload(self) -> t.Self:
        import ray

        from rig_ray.cluster import group_gpus

        if not self._workers:
            return self
        for worker in self._workers:
            ray.kill(worker)  # as vLLM's executor ends its workers: no wait
        self._workers = []
        waited = group_gpus.await_free(self._before)
        after = group_gpus.free_now()
        seen = {**self._seen, "waited": waited, "after": after.free if after else None}
        with open(self.log, "a") as out:
            out.write(json.dumps(seen) + "\n")
        return self


class _GpuWorker:
    def ready(self) -> bool:
        return True


class HangsOnUnload(NotesUnload):
    """Notes its load; its unload never returns (a hung engine)."""

    def unload(self) -> t.Self:
        import threading

        if self._up:
            threading.Event().wait()
        return self


class NotesLoadSpan(NotesUnload):
    """As NotesUnload, but its load takes `load_s` (an engine filling its share of a GPU) and
    appends its start and end times and its GPU ids to the file `log`, as a JSON line. Its
    generation calls wait until `loads` loads are in the log (so a job cannot end, and end
    its actors, before they have all loaded)."""

    load_s: float = 1.0
    loads: int = 0

    def measures_free_gpu_memory(self) -> bool:
        return True  # as vLLM's engine: engines on shares of one GPU must load in turn

    def load(self) -> t.Self:
        import time

        if not self._up:
            started = time.time()
            time.sleep(self.load_s)  # long by construction: another load would overlap it
            self._up = True
            import ray

            gpus = sorted(str(gpu) for gpu in ray.get_gpu_ids())
            with open(self.log, "a") as out:
                out.write(json.dumps([started, time.time(), gpus]) + "\n")
        return self

    async def generate_messages(self, messages: t.Any, params: t.Any) -> t.Any:
        import asyncio

        for _ in range(600):  # a minute at most
            if len(load_spans(self.log)) >= self.loads:
                break
            await asyncio.sleep(0.1)
        return await super().generate_messages(messages, params)


def load_spans(log: str) -> list[list[t.Any]]:
    """The spans `NotesLoadSpan` noted in `log`, in order of their start."""
    try:
        lines = Path(log).read_text().splitlines()
    except FileNotFoundError:
        return []
    return sorted(json.loads(line) for line in lines if line.startswith("["))
