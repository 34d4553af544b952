"""The one line a batch job shows for an error that came out of a Ray task."""

from __future__ import annotations

import re

from rig_ray.errors import RigRayError
from rig_ray.redaction import redact


def cause_line(error: BaseException) -> str:
    """The root of an error from a Ray task, in one short line (not Ray's whole traceback):
    the first rig_ray error down its chain of causes (a Ray task's `cause`, then each
    `__cause__`); else one that a Ray Data task's traceback quotes (Ray Data wraps what a
    task raised in a `UserCodeException` that keeps only its text); else the last cause."""
    root, seen = error, set()
    while id(root) not in seen and not isinstance(root, RigRayError):
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


_QUOTED = re.compile(r"^rig_ray\.errors\.(\w+): (.+)$", re.MULTILINE)
