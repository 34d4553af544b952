"""Niceness as a script sees it in a process of its own, with no Ray to join (the tests' own
Ray runs already): its own, and that of the Ray worker it asks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def niceness_in_a_fresh_process(script: str, env: dict[str, str] | None = None) -> tuple[int, int]:
    """Run `script`, which prints `niceness <its own> <the worker's>`; the two numbers."""
    hidden = ("RAY_ADDRESS", "RAY_worker_niceness")
    environment = {k: v for k, v in os.environ.items() if k not in hidden} | (env or {})
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=environment,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    said = [line.split() for line in done.stdout.splitlines() if line.startswith("niceness")]
    assert done.returncode == 0 and said, done.stdout + done.stderr
    return int(said[-1][1]), int(said[-1][2])
