"""Progress of a batch job on the console: done/total, rows and tokens per second, time left."""

from __future__ import annotations

import sys
import time
import typing as t


class Progress:
    """Counts written rows and prints a progress line every `every_s` seconds.

    Nothing is printed for jobs that end within the first interval.
    """

    def __init__(
        self, total: int | None, *, every_s: float = 5.0, stream: t.TextIO | None = None
    ) -> None:
        self.total = total
        self.rows = 0
        self.failed = 0
        self.output_tokens = 0
        self._every_s = every_s
        self._stream = stream
        self._started = time.monotonic()
        self._last_print = self._started
        self._printed_rows: int | None = None  # rows at the last line printed, if any

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._started

    def add(self, rows: int, failed: int, output_tokens: int) -> None:
        self.rows += rows
        self.failed += failed
        self.output_tokens += output_tokens
        if self._every_s >= 0 and time.monotonic() - self._last_print >= self._every_s:
            self.print_line()

    def line(self) -> str:
        elapsed = max(self.elapsed_s, 1e-9)
        rate = self.rows / elapsed
        done = f"{self.rows:,}" if self.total is None else f"{self.rows:,}/{self.total:,}"
        parts = [
            f"rig-ray batch: {done} rows",
            f"{rate:.1f} rows/s",
            f"{self.output_tokens / elapsed:.1f} tok/s",
        ]
        if self.failed:
            parts.append(f"{self.failed:,} failed")
        if self.total is not None and self.rows and self.total > self.rows:
            parts.append(f"about {_duration((self.total - self.rows) / rate)} left")
        parts.append(f"{_duration(elapsed)} elapsed")
        return ", ".join(parts)

    def finish(self) -> None:
        """A last line, for jobs that printed progress and did more since."""
        if self._printed_rows is not None and self.rows != self._printed_rows:
            self.print_line()

    def print_line(self) -> None:
        print(self.line(), file=self._stream or sys.stderr, flush=True)
        self._last_print = time.monotonic()
        self._printed_rows = self.rows


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
