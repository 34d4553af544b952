"""Where `rig-ray serve` really serves, and when it is ready: the running Serve's address,
and a wait on GET /health."""

from __future__ import annotations

import time
import typing as t

READY_POLL_S = 0.5
"""Seconds between two looks at /health while the models load."""


def listening() -> tuple[str, int]:
    """The host and port of the running Serve's HTTP proxies (from its controller)."""
    from ray.serve.context import _get_global_client

    options = t.cast(t.Any, _get_global_client()).http_config
    return str(options.host), int(options.port)


def client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def wait_until_ready(url: str) -> None:
    """Wait until GET /health answers 200: every model has loaded."""
    import urllib.error
    import urllib.request

    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=10) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):  # 503 while loading, or not listening yet
            pass
        time.sleep(READY_POLL_S)
