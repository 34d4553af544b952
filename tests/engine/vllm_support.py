"""What the vLLM engine tests share: the engine settings, long requests, and the engine
processes of a generator (from vLLM's own list) and of this test process."""

from __future__ import annotations

import asyncio
import time
import typing as t

import psutil

import rig_ray as rr
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.vllm_ import engine_processes

ENGINE = {"enforce_eager": True, "max_model_len": 1024, "gpu_memory_utilization": 0.05}
RUN_ON = GenerateParams(temperature=0, extra={"ignore_eos": True})
LONG = RUN_ON.merge_with(GenerateParams(max_tokens=1000))
"""A request that runs ~1000 engine steps: it outlasts anything a test does meanwhile."""


async def wait_until(predicate: t.Callable[[], bool], *, within: float = 60.0) -> None:
    """Poll `predicate` until it holds; fail the test if it does not within `within` s."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "the awaited event did not happen"
        await asyncio.sleep(0.02)


def engine_pids(generator: rr.VLLMGenerator) -> set[int]:
    return {process.pid for process in engine_processes(generator._engine)}


def alive(pids: t.Iterable[int]) -> set[int]:
    living = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                living.add(pid)
        except psutil.NoSuchProcess:
            pass
    return living


def engine_children() -> list[psutil.Process]:
    """Engine processes among this process's descendants (vLLM names them VLLM::EngineCore)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            name = child.name()
            if ("VLLM" in name or "EngineCore" in name) and child.status() != "zombie":
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found
