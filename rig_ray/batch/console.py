"""A job's console: rig_ray's own lines, and nothing that holds a secret.

- `quiet_stderr` filters the process's file descriptor 2 (C++ logs write there directly):
  Ray's notice that an actor "might fail to restart" (Ray Data gives its actors restarts and
  ships their transform through the object store) is dropped, and every line that passes is
  redacted and scrubbed with the job's own secrets.
- `actor_output` rewrites what Ray forwards from actors to the driver's console: redacted,
  scrubbed and made printable always (`rig_ray.terminal.printable_line`), and dropped
  altogether unless `verbose` (engines' loading bars, Triton, NUMA and FutureWarning lines,
  INFO logs: none of them is rig_ray's).
- `job_console` puts both around a batch job, with Ray Data's own progress logs and bars off
  unless `verbose`, and every console log handler redacting.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import threading
import time
import typing as t

from rig_ray.redaction import RedactingFilter, scrub
from rig_ray.terminal import printable_line

NOISE = (
    re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the "
               rb"object store and max_restarts > 0"),
)  # fmt: skip
"""Lines of Ray's own that are dropped from the console."""

_FORWARDER = "ray_print_logs"
"""The name Ray gives its handler that prints actors' output in the driver."""


@contextlib.contextmanager
def job_console(
    sources: t.Sequence[t.Any] = (), *, progress: bool = True, verbose: bool = False
) -> t.Iterator[None]:
    """The console of a batch job whose secrets are in `sources` (its generators)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(redacting_logs(sources))
        stack.enter_context(quiet_stderr(sources))
        stack.enter_context(actor_output(sources, verbose=verbose))
        if progress or not verbose:
            stack.enter_context(ray_data_quiet())
        yield


@contextlib.contextmanager
def redacting_logs(sources: t.Sequence[t.Any] = ()) -> t.Iterator[None]:
    """A `RedactingFilter` scrubbing with `sources` on the console's log handlers meanwhile:
    the root's, Python's last-resort handler, and Ray's."""
    handlers: list[logging.Handler] = list(logging.getLogger().handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for name in ("ray", "ray.data", "ray.serve"):
        handlers.extend(logging.getLogger(name).handlers)
    installed = RedactingFilter(*sources)
    for handler in handlers:
        handler.addFilter(installed)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(installed)


LATE_S = 10.0
"""How long after a quiet job ends its actors' late lines are still kept out."""
_KEPT_SOURCES = 64


class _Forwarding:
    """How this process's forwarded actor output is shown: scrubbed with the secrets of every
    job run here (lines arrive after their job ends), and kept out while a quiet job runs and
    for `LATE_S` after."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sources: list[t.Any] = []
        self.quiet_jobs = 0
        self.quiet_until = 0.0

    def keeps(self) -> bool:
        return not self.quiet_jobs and time.monotonic() >= self.quiet_until

    def learn(self, sources: t.Sequence[t.Any]) -> None:
        with self.lock:
            self.sources = [*self.sources, *sources][-_KEPT_SOURCES:]


_FORWARDING = _Forwarding()


@contextlib.contextmanager
def actor_output(sources: t.Sequence[t.Any] = (), *, verbose: bool = False) -> t.Iterator[None]:
    """What Ray forwards from actors to this driver, scrubbed with `sources` (and kept out
    unless `verbose`) while the job runs, and until its late lines have come."""
    forward_redacted(sources)
    if verbose:  # this job wants its lines, whatever the one before it did
        with _FORWARDING.lock:
            _FORWARDING.quiet_until = 0.0
        yield
        return
    with _FORWARDING.lock:
        _FORWARDING.quiet_jobs += 1
    try:
        yield
    finally:
        with _FORWARDING.lock:
            _FORWARDING.quiet_jobs -= 1
            _FORWARDING.quiet_until = max(_FORWARDING.quiet_until, time.monotonic() + LATE_S)


def forward_redacted(sources: t.Sequence[t.Any] = ()) -> None:
    """From now on, what Ray forwards from actors to this driver is redacted and scrubbed with
    `sources` too. Ray prints it through a named handler of its stream dispatcher, which is
    wrapped (once per Ray session: `ray.shutdown` drops it)."""
    _FORWARDING.learn(sources)
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # pragma: no cover - Ray's internals moved: its output stays as it is
        return
    with dispatcher._lock:
        dispatcher.handlers = [
            (name, _wrapped(handler) if name == _FORWARDER else handler)
            for name, handler in dispatcher.handlers
        ]


def _wrapped(
    handler: t.Callable[[dict[str, t.Any]], None],
) -> t.Callable[[dict[str, t.Any]], None]:
    if getattr(handler, "_rig_ray_redacts", False):
        return handler

    @functools.wraps(handler)
    def forward(data: dict[str, t.Any]) -> None:
        if not _FORWARDING.keeps():
            return
        sources = _FORWARDING.sources
        lines = [printable_line(scrub(str(line), *sources)) for line in data.get("lines", [])]
        handler({**data, "lines": lines})

    forward._rig_ray_redacts = True  # type: ignore[attr-defined]
    return forward


@contextlib.contextmanager
def ray_data_quiet() -> t.Iterator[None]:
    """Ray Data's progress bars, execution-start lines and INFO logs off meanwhile."""
    from ray.data import DataContext
    from ray.util.debug import log_once

    context = DataContext.get_current()
    logger = logging.getLogger("ray.data")
    saved = context.enable_progress_bars, context.print_on_execution_start, logger.level
    log_once("ray_data_progress_manager_disabled")  # no "bars disabled" warning: we show ours
    context.enable_progress_bars = context.print_on_execution_start = False
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved[:2]
        logger.setLevel(saved[2])


@contextlib.contextmanager
def quiet_stderr(sources: t.Sequence[t.Any] = ()) -> t.Iterator[None]:
    """Filter file descriptor 2 through `NOISE`, redacting and scrubbing with `sources`."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # captured or replaced: nothing to filter
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    reader, writer = os.pipe()
    os.dup2(writer, fd)
    os.close(writer)
    pump = threading.Thread(
        target=_pump, args=(reader, saved, tuple(sources)), name="rig_ray-stderr", daemon=True
    )
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)  # the pipe's last writer closes: the pump sees its end
        pump.join(timeout=5)
        os.close(saved)


def _pump(reader: int, target: int, sources: tuple[t.Any, ...] = ()) -> None:
    pending = b""
    with os.fdopen(reader, "rb", buffering=0) as source:
        while chunk := source.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            _write(target, lines, sources)
    if pending:
        _write(target, [pending], sources, newline=False)


def _write(
    target: int, lines: list[bytes], sources: tuple[t.Any, ...] = (), newline: bool = True
) -> None:
    kept = [
        scrub(line.decode(errors="replace"), *sources).encode()
        for line in lines
        if not any(pattern.search(line) for pattern in NOISE)
    ]
    if kept:
        data = b"\n".join(kept) + (b"\n" if newline else b"")
        with contextlib.suppress(OSError):
            os.write(target, data)
