"""`HealthProbe`: whether a replica's engine still answers, from a tiny generation.

Serve calls a replica's `check_health` every few seconds and replaces a replica whose check
keeps failing. A loaded engine can still hang (a stuck GPU kernel, a dead remote API
connection, a deadlock); only a generation shows it. The probe starts a one-token generation
in the background at most once per `interval_s`, and not at all while real requests keep
finishing (they show the engine answers). The check fails once a probe has waited
`timeout_s` with nothing finishing meanwhile, or when a probe's generate call failed whole;
it keeps failing, check after check (a new probe starting at once each time), until a
probe or a real request gets an answer. Serve replaces a replica only after several
failed checks in a row, so a failure that passed the next check would never count.
"""

from __future__ import annotations

import asyncio
import time
import typing as t

from rig_ray.generator.base import Generator
from rig_ray.generator.params import GenerateParams
from rig_ray.message import Message

PROBE_PARAMS = GenerateParams(max_tokens=1, temperature=0)


async def tiny_generation(generator: Generator) -> None:
    """One token of a one-word chat (or text, for generators that only complete texts).

    An item error counts as an answer (the engine replied); only a call that fails whole or
    never returns means it does not answer."""
    try:
        await generator.generate_messages([[Message(role="user", content="Hi")]], [PROBE_PARAMS])
    except NotImplementedError:
        await generator.generate_texts(["Hi"], [PROBE_PARAMS])


class HealthProbe:
    """Runs `probe` in the background, at most once per `interval_s`, and judges it."""

    def __init__(
        self,
        probe: t.Callable[[], t.Coroutine[t.Any, t.Any, None]],
        *,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self._probe = probe
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._last_answer = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0
        self._failure: str | None = None
        """Why the last probe failed, until a probe or a request gets an answer."""

    def answered(self) -> None:
        """Record that the engine just finished some work (a request's generate call)."""
        self._last_answer = time.monotonic()
        self._failure = None

    def check(self) -> None:
        """Raise RuntimeError when the engine has stopped answering; start a probe when due."""
        now = time.monotonic()
        task = self._task
        if task is not None and task.done():
            self._task = None
            error = None if task.cancelled() else task.exception()
            if error is not None:
                self._failure = f"the health probe's generation failed: {error!r}"
            else:
                self._failure = None
                self._last_answer = max(self._last_answer, now)
        elif task is not None and now - max(self._started, self._last_answer) > self.timeout_s:
            raise RuntimeError(
                f"the engine has not answered a one-token generation in {self.timeout_s:g} s"
            )
        if self._task is None and (
            self._failure is not None or now - self._last_answer >= self.interval_s
        ):
            self._started = now
            self._task = asyncio.get_running_loop().create_task(self._probe())
        if self._failure is not None:
            raise RuntimeError(self._failure)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
