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
deployment), one replica. A replica that restarts takes the port again once its old one
has let it go.
"""

from __future__ import annotations

import socket
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
    refused = refusal(
        generators=generators, replicas=replicas, address=address, one_deployment=one_deployment
    )
    if asked and refused is not None:
        raise ServeConfigError(refused)
    return refused is None if asked is None else asked


def refusal(
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
    }


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (for Serve's own proxy, which clients do not use)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


__all__: t.Sequence[str] = ["DRAINING_S", "applies", "environment", "free_port", "refusal"]
