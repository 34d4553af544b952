"""Progress of a batch job on the console: done/total, rows and tokens per second, time left."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import typing as t


class Progress:
    """Counts written rows and prints a progress line every `every_s` seconds.

    Lines come as rows arrive and, inside `ticking()`, also while none do (a model loading, a
    slow first batch). Nothing is printed for jobs that end within the first interval.
    """

    def __init__(
        self,
        total: int | None,
        *,
        every_s: float = 5.0,
        stream: t.TextIO | None = None,
        label: str = "rig-ray batch",
        tokens: bool = True,
    ) -> None:
        self.total = total
        self.label = label
        self.tokens = tokens
        """Whether lines tell tokens per second (not while the input is read)."""
        self.rows = 0
        self.failed = 0
        self.output_tokens = 0
        self._every_s = every_s
        self._stream = stream
        self._started = time.monotonic()
        self._last_print = self._started
        self._printed_rows: int | None = None  # rows at the last line printed, if any
        self._lock = threading.Lock()
        self.note: str | None = None
        """Said while no row has come yet (e.g. what the job waits for)."""

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._started

    def add(self, rows: int, failed: int, output_tokens: int) -> None:
        with self._lock:
            self.rows += rows
            self.failed += failed
            self.output_tokens += output_tokens
        self._maybe_print()

    @contextlib.contextmanager
    def ticking(self) -> t.Iterator[None]:
        """Print due lines from a background thread too, while the block runs."""
        if self._every_s < 0:
            yield
            return
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(min(1.0, max(self._every_s, 0.01))):
                self._maybe_print()

        ticker = threading.Thread(target=tick, name="rig_ray-progress", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()

    def _maybe_print(self) -> None:
        if self._every_s < 0:
            return
        with self._lock:  # the ticker and the rows' thread: one line for one interval
            if time.monotonic() - self._last_print >= self._every_s:
                self._print()

    def line(self) -> str:
        elapsed = max(self.elapsed_s, 1e-9)
        rate = self.rows / elapsed
        done = f"{self.rows:,}" if self.total is None else f"{self.rows:,}/{self.total:,}"
        parts = [f"{self.label}: {done} rows", f"{rate:.1f} rows/s"]
        if self.tokens:
            parts.append(f"{self.output_tokens / elapsed:.1f} tok/s")
        if self.failed:
            parts.append(f"{self.failed:,} failed")
        if self.total is not None and self.rows and self.total > self.rows:
            parts.append(f"about {_duration((self.total - self.rows) / rate)} left")
        parts.append(f"{_duration(elapsed)} elapsed")
        if self.note and not self.rows:
            parts.append(self.note)
        return ", ".join(parts)

    def finish(self) -> None:
        """A last line, for jobs that printed progress and did more since."""
        if self._printed_rows is not None and self.rows != self._printed_rows:
            self.print_line()

    def print_line(self) -> None:
        with self._lock:
            self._print()

    def _print(self) -> None:
        print(self.line(), file=self._stream or sys.stderr, flush=True)
        self._last_print = time.monotonic()
        self._printed_rows = self.rows


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
