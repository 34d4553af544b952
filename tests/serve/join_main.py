"""`rig-ray serve --address auto` joining a Serve that already runs, in one process:
`python -m tests.serve.join_main HOST PORT`. Starts a local Ray with Serve on HOST:PORT and
runs `rig-ray serve --address auto --port <another>` twice: first without $RIG_RAY_API_KEY,
then (on a Ray and Serve started again, on PORT + 2, as the first run's exit shut Ray down in
this process) with one; each until it prints its serving line, then stopped with SIGTERM, and
its status printed."""

from __future__ import annotations

import os
import signal
import sys
import threading
import typing as t

import ray
from ray import serve

from rig_ray.serve import cli

REMOTE = "openai/upstream,api_base=http://127.0.0.1:9/v1"


class Watch:
    """stdout that sends SIGTERM to this process once the serving line is written."""

    def __init__(self, out: t.TextIO) -> None:
        self.out = out

    def write(self, text: str) -> int:
        written = self.out.write(text)
        if "rig-ray: serving" in text:
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return written

    def flush(self) -> None:
        self.out.flush()


def serve_once(host: str, port: int, key: str | None) -> None:
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="warning")
    serve.start(http_options={"host": host, "port": port})
    if key is None:
        os.environ.pop("RIG_RAY_API_KEY", None)
    else:
        os.environ["RIG_RAY_API_KEY"] = key
    argv = ["-g", REMOTE, "--name", "up", "--address", "auto", "--port", str(port + 1)]
    status = cli.main([*argv, "--num-cpus", "0.1"])
    print(f"status: {status}", flush=True)
    if ray.is_initialized():
        ray.shutdown()


def main(host: str, port: int) -> None:
    sys.stdout = Watch(sys.stdout)  # type: ignore[assignment]
    serve_once(host, port, key=None)
    serve_once(host, port + 2, key="joined-key")  # a port the first run's Serve never held


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
