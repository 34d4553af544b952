"""Direct ingress: the model's replica answers HTTP on `--port` itself (`rig-ray serve`'s
default where it applies; `--no-direct-ingress` turns it off).

Through Serve's HTTP proxy, a process of its own, every request and every streamed chunk
takes one Ray hop more between the replica and the client. Ray Serve 2.60 has a
feature flag, `RAY_SERVE_ENABLE_DIRECT_INGRESS`, under which an ingress replica also runs an
HTTP server of its own, on a port its controller hands out from a range. Here the range is
the one port asked for, so clients find the app where they always do, with no proxy in
between; Serve's proxy still runs, on a port of its own that nobody needs.

Serve's processes read the flag as they start, so it only works on a Ray this command
starts (not with `--address`), and one replica can hold the port: one generator (one
deployment), one replica. A replica that replaces a dead one takes the port again as it
starts.
"""

from __future__ import annotations

import logging
import os
import socket
import types
import typing as t

from rig_ray.errors import ServeConfigError

DRAINING_S = 0.0
"""How long Serve keeps a stopping direct-ingress replica up for load balancers to notice
(Serve's default: 30 s): none here, as `rig-ray serve` answers its running requests that it
is stopping before it stops Serve."""


def applies(
    asked: bool | None, *, generators: int, replicas: int, address: str, one_deployment: bool | None
) -> bool:
    """Whether the model's replica answers HTTP itself: as `asked` (True where it cannot
    is a `ServeConfigError` naming why), and, unasked, wherever it can."""
    refused = _refusal(
        generators=generators, replicas=replicas, address=address, one_deployment=one_deployment
    )
    if asked and refused is not None:
        raise ServeConfigError(refused)
    return refused is None if asked is None else asked


def _refusal(
    *, generators: int, replicas: int, address: str, one_deployment: bool | None
) -> str | None:
    """Why direct ingress cannot apply here; None where it can."""
    if address != "local":
        return (
            "--direct-ingress needs a Ray of this command's own: Serve's processes read it as "
            f"they start, so it cannot apply to the running cluster at {address!r}"
        )
    if generators != 1 or one_deployment is False:
        return (
            "--direct-ingress serves one generator from its own replica: give one --generator "
            "and leave out --split-deployments"
        )
    if replicas != 1:
        return f"--direct-ingress takes one replica (the one that holds --port), not {replicas}"
    return None


def environment(port: int) -> dict[str, str]:
    """What Serve's processes must find in their environment for the replica to answer on
    `port` (set before Ray starts: its workers inherit it)."""
    grpc = free_port()
    return {  # each range is [min, max): the one port
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc + 1),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAINING_S),
        # Serve holds a released port back (150 s) for HAProxy's stale workers, which do not
        # run here: the replica that replaces a dead one takes the one port at once.
        "RAY_SERVE_PORT_QUARANTINE_S": "0",
    }


def quiet_proxy_address() -> None:
    """Leave out Serve's line that the app "is ready at" its proxy's address: with direct
    ingress that is a port no client needs (`rig-ray serve` says where it serves)."""
    logging.getLogger("ray.serve").addFilter(_not_the_proxy_address)


def _not_the_proxy_address(record: logging.LogRecord) -> bool:
    return "is ready at http" not in record.getMessage()


def bind_over_closed_connections() -> None:
    """In a replica that answers HTTP itself, have Serve bind its port with `SO_REUSEADDR`,
    as uvicorn and most servers do.

    Serve 2.60 binds the replica's port without it, so the replica that replaces a dead one
    cannot bind while the port still has connections in TIME_WAIT (each one the server
    closed in the last 60 s): it fails after loading its model, and Serve starts another,
    which loads the model again. `SO_REUSEADDR` lets a new listener bind over closed
    connections, never beside a live listener."""
    if os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") != "1":
        return
    from ray.serve._private import http_util

    if not isinstance(http_util.socket, _ReusingSockets):
        http_util.socket = _ReusingSockets(http_util.socket)  # type: ignore[assignment]


class _ReusingSockets(types.ModuleType):
    """The `socket` module, whose `socket()` sets `SO_REUSEADDR` on what it makes."""

    def __init__(self, module: types.ModuleType) -> None:
        super().__init__(module.__name__)
        self._module = module

    def __getattr__(self, name: str) -> t.Any:
        return getattr(self._module, name)

    def socket(self, *args: t.Any, **kwargs: t.Any) -> socket.socket:
        made = socket.socket(*args, **kwargs)
        made.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return made


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (for Serve's own proxy, which clients do not use)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


__all__: t.Sequence[str] = [
    "DRAINING_S",
    "applies",
    "bind_over_closed_connections",
    "environment",
    "free_port",
    "quiet_proxy_address",
]
