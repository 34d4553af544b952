"""`Polling`: something sampled every 0.1 s in a thread of its own while a `with` body runs."""

from __future__ import annotations

import threading
import typing as t


class Polling:
    """Calls `sample()` every `every_s` while the `with` body runs (and once as it starts)."""

    every_s: t.ClassVar[float] = 0.1

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every_s)

    def __enter__(self) -> t.Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
