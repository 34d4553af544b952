"""The one line a batch job shows for an error that came out of a Ray task."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import typing as t

from rig_ray.errors import RigRayError
from rig_ray.redaction import redact


def cause_line(error: BaseException) -> str:
    """The root of an error from a Ray task, in one short line (not Ray's whole traceback):
    the first rig_ray error down its chain of causes (a Ray task's `cause`, then each
    `__cause__`); else one that a Ray Data task's traceback quotes (Ray Data wraps what a
    task raised in a `UserCodeException` that keeps only its text); else the last cause."""
    root, seen = error, set()
    while id(root) not in seen and (not isinstance(root, RigRayError) or is_task_error(root)):
        seen.add(id(root))
        cause = getattr(root, "cause", None)
        cause = cause if isinstance(cause, BaseException) else root.__cause__
        if cause is None:
            break
        root = cause
    name, text = type(root).__name__, str(root)
    quoted = None if isinstance(root, RigRayError) else _QUOTED.search(str(error))
    if quoted is not None:
        name, text = quoted.group(1), quoted.group(2)
    first = (text.strip().splitlines() or [""])[0]
    return redact(f"{name}: {' '.join(first.split())[:500]}")


def is_task_error(error: BaseException) -> bool:
    """Whether `error` is Ray's wrapper of what a task raised (which Ray makes a subclass of
    the task's error too, a `RayTaskError(BatchInputError)`; its text is Ray's header)."""
    exceptions = sys.modules.get("ray.exceptions")
    return exceptions is not None and isinstance(error, exceptions.RayTaskError)


_QUOTED = re.compile(r"^rig_ray\.errors\.(\w+): (.+)$", re.MULTILINE)


_TASK_ERROR_LOGGERS = ("ray.data._internal.execution", "ray.data.exceptions")
"""Where Ray Data logs a failed task of a dataset, before it raises the error."""


@contextlib.contextmanager
def errors_told_once() -> t.Iterator[None]:
    """Keep Ray Data's own log lines about a failed task off the console while the caller
    turns the error into one line of its own (`cause_line`)."""
    loggers = [logging.getLogger(name) for name in _TASK_ERROR_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
