"""Extra fakes for the pool and remote tests (slow, broken, with a load state), and helpers."""

from __future__ import annotations

import asyncio
import time
import typing as t

from pydantic import PrivateAttr

import rig_ray as rr
from tests.fakes import FixedGenerator


class Sleepy(rr.Generator):
    """Takes `seconds` per batch; records whether it was cancelled."""

    seconds: float = 30.0
    _cancelled: list[bool] = PrivateAttr(default_factory=list)

    async def generate_texts(self, texts, params):
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self._cancelled.append(True)
            raise
        return [rr.GeneratedText(text="late") for _ in texts]


class Boom(rr.Generator):
    """Fails every batch as a whole."""

    async def generate_texts(self, texts, params):
        raise RuntimeError("engine on fire")


class KeywordOnly(Exception):
    """Pickles, but cannot be rebuilt from its args: unpickling it raises TypeError."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class RaisesKeywordOnly(rr.Generator):
    async def generate_texts(self, texts, params):
        raise KeywordOnly("rate limited", status=429)


class Loadable(FixedGenerator):
    """A fake with a load state, to watch lifecycle calls."""

    _loaded: bool = PrivateAttr(False)

    @property
    def is_loaded(self) -> bool:
        return self._loaded

    def load(self) -> t.Self:
        self._loaded = True
        return self

    def unload(self) -> t.Self:
        self._loaded = False
        return self


def wait_for_restart(remote: rr.RemoteGenerator, pid: int) -> dict[str, t.Any]:
    """`ray.kill` returns before the actor is gone: wait until a new process answers."""
    for _ in range(300):
        info = remote.info()
        if info["pid"] != pid:
            return info
        time.sleep(0.1)
    raise AssertionError("the actor was not restarted")


class Trickle(rr.Generator):
    """Streams the words of its reply one by one, `pause` seconds apart; `fail_after` words in,
    it raises. Records, in a file, whether a stream was stopped before its end."""

    pause: float = 0.05
    fail_after: int | None = None
    stopped_file: str | None = None

    async def generate_texts(self, texts, params):
        replies = [f"{text} one two three" for text in texts]
        return [rr.GeneratedText(text=reply, stop_reason="stop") for reply in replies]

    async def stream_text(self, text, params=None):
        words = f"{text} one two three".split(" ")
        try:
            for index, word in enumerate(words):
                if self.fail_after is not None and index == self.fail_after:
                    raise rr.GenerationError(f"failed after {index} words")
                await asyncio.sleep(self.pause)
                last = index == len(words) - 1
                yield rr.GeneratedChunk(
                    text=word if index == 0 else f" {word}",
                    stop_reason="stop" if last else None,
                    usage=rr.Usage(input_tokens=1, output_tokens=len(words)) if last else None,
                )
        except (asyncio.CancelledError, GeneratorExit):
            if self.stopped_file:
                with open(self.stopped_file, "w") as marker:
                    marker.write("stopped")
            raise


class Continuous(FixedGenerator):
    """Says it batches continuously, with an engine that runs `seqs` sequences at once."""

    batches_continuously: t.ClassVar[bool] = True
    seqs: int = 300

    async def capacity(self) -> int | None:
        return self.seqs


def niceness(item: t.Any, params: rr.GenerateParams) -> str:
    """A `CallbackGenerator` callback: the niceness of the process that runs it."""
    import os

    return str(os.nice(0))
