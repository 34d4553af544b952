"""Generators for the batch tests: one that dies, one that is slow, one that counts batches."""

from __future__ import annotations

import asyncio
import os
import time
import typing as t
from pathlib import Path

from tests.fakes import EchoGenerator


class DiesOnce(EchoGenerator):
    """Echoes; the first batch that finds no `marker` file creates it and kills the process."""

    marker: str

    async def generate_messages(self, messages: t.Any, params: t.Any) -> t.Any:
        if not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return await super().generate_messages(messages, params)


class AlwaysDies(EchoGenerator):
    """Kills its process on every batch, noting each death in `log`."""

    log: str

    async def generate_messages(self, messages: t.Any, params: t.Any) -> t.Any:
        with open(self.log, "a") as log:
            log.write(f"{os.getpid()}\n")
        os._exit(1)


class SlowEcho(EchoGenerator):
    """Echoes after `seconds` per batch; at once when the file `fast_when` (if given) exists,
    so a run that resumes a killed one need not wait as the killed one did."""

    seconds: float = 0.2
    fast_when: str | None = None

    async def generate_messages(self, messages: t.Any, params: t.Any) -> t.Any:
        if not (self.fast_when and Path(self.fast_when).exists()):
            time.sleep(self.seconds)
        return await super().generate_messages(messages, params)


class CountsLoads(EchoGenerator):
    """Echoes; every load (one per actor that starts) appends a line to `log`."""

    log: str

    def load(self) -> t.Any:
        with open(self.log, "a") as log:
            log.write(f"{os.getpid()}\n")
        return super().load()


class Sleeper(EchoGenerator):
    """Echoes after sleeping `seconds` without blocking its event loop; each result's `extra`
    holds `peak`, the most calls this process had running at once so far."""

    seconds: float = 0.5

    async def generate_messages(self, messages: t.Any, params: t.Any) -> t.Any:
        _running[0] += 1
        _running[1] = max(_running[1], _running[0])
        try:
            await asyncio.sleep(self.seconds)
            results = await super().generate_messages(messages, params)
        finally:
            _running[0] -= 1
        return [r.model_copy(update={"extra": {"peak": _running[1]}}) for r in results]


_running = [0, 0]  # calls running now, most at once


class FailsUntilFixed(EchoGenerator):
    """Echoes, but fails items containing FAIL until the file `fixed` exists."""

    fixed: str

    async def generate_messages(self, messages: t.Any, params: t.Any) -> t.Any:
        results = await super().generate_messages(messages, params)
        if Path(self.fixed).exists():
            return results
        return [
            RuntimeError("not yet") if "FAIL" in conversation[-1].content else result
            for conversation, result in zip(messages, results, strict=True)
        ]


class Whole(EchoGenerator):
    """Fails whole batches: `generate_messages` raises."""

    async def generate_messages(self, messages: t.Any, params: t.Any) -> t.Any:
        raise RuntimeError("the engine is out of memory")


class StopsAt(EchoGenerator):
    """Echoes, but raises `BatchStoppedError` on a batch holding STOP, as the `serve` provider
    does once its `/v1/batches` batch is stopped."""

    async def generate_messages(self, messages: t.Any, params: t.Any) -> t.Any:
        from rig_ray.errors import BatchStoppedError

        if any("STOP" in conversation[-1].content for conversation in messages):
            raise BatchStoppedError("batch_test")
        return await super().generate_messages(messages, params)


def rows(path: Path, count: int, *, start: int = 0, **extra: t.Any) -> Path:
    """Write `count` JSONL rows with ids `r<n>` and a `topic` to `path` (appending)."""
    import json

    with path.open("a") as out:
        for n in range(start, start + count):
            out.write(json.dumps({"id": f"r{n}", "topic": f"topic {n}", **extra}) + "\n")
    return path


def output_rows(folder: Path) -> list[dict[str, t.Any]]:
    from rig_ray.batch import read_output

    return read_output(str(folder)).to_pylist()


__all__ = [
    "AlwaysDies",
    "CountsLoads",
    "DiesOnce",
    "FailsUntilFixed",
    "Sleeper",
    "SlowEcho",
    "Whole",
    "output_rows",
    "rows",
]
