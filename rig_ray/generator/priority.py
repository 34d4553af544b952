"""The scheduling priority of the requests made in the current context.

vLLM's scheduler (with `scheduling_policy="priority"`) runs the requests of a lower number
first. Serve replicas set `REQUEST_PRIORITY` around a request (online requests 0, batch rows
`BATCH_PRIORITY`), and the vLLM generator gives every engine request it makes meanwhile that
priority; engines without priorities ignore it.
"""

from __future__ import annotations

import contextvars

ONLINE_PRIORITY = 0
BATCH_PRIORITY = 10
"""Rows of `/v1/batches` jobs: after every online request."""

REQUEST_PRIORITY: contextvars.ContextVar[int] = contextvars.ContextVar(  # use the functions: a
    # ContextVar cannot be pickled into a class that Serve ships by value
    "rig_ray_request_priority",
    default=ONLINE_PRIORITY,
)


def set_priority(priority: int) -> None:
    """The priority of the requests made from here on in this context (a Serve request's
    own task: it ends with the request)."""
    REQUEST_PRIORITY.set(priority)


def current_priority() -> int:
    return REQUEST_PRIORITY.get()
