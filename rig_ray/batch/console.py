"""A batch job's console: Ray's notices that say nothing to a user, kept out; errors kept in.

Ray Data ships every actor pool's transform through the object store and gives its actors
restarts, and Ray's core then logs, at error level and from C++ (no Python logger to tune), a
warning that such an actor might fail to restart. `quiet_stderr` drops exactly that line from
the process's stderr while the job runs; every other line passes through unchanged.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import typing as t

NOISE = (
    re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the "
               rb"object store and max_restarts > 0"),
)  # fmt: skip
"""Lines of Ray's own that are dropped from the console."""


@contextlib.contextmanager
def quiet_stderr() -> t.Iterator[None]:
    """Filter file descriptor 2 (C++ logs write there directly) through `NOISE`."""
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
    pump = threading.Thread(target=_pump, args=(reader, saved), name="rig_ray-stderr", daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)  # the pipe's last writer closes: the pump sees its end
        pump.join(timeout=5)
        os.close(saved)


def _pump(reader: int, target: int) -> None:
    pending = b""
    with os.fdopen(reader, "rb", buffering=0) as source:
        while chunk := source.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            _write(target, lines)
    if pending:
        _write(target, [pending], newline=False)


def _write(target: int, lines: list[bytes], newline: bool = True) -> None:
    kept = [line for line in lines if not any(pattern.search(line) for pattern in NOISE)]
    if kept:
        data = b"\n".join(kept) + (b"\n" if newline else b"")
        with contextlib.suppress(OSError):
            os.write(target, data)
