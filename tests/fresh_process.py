"""A script run in a process of its own, with no Ray to join (the tests' own Ray runs
already): it starts its own, and that Ray ends with it, also when it has to be stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(
    script: str,
    *args: str,
    env: dict[str, str] | None = None,
    hidden: tuple[str, ...] = ("RAY_ADDRESS",),
    timeout: float = 180.0,
) -> str:
    """Run `python -c script *args` from the repository, the environment's `hidden` names
    left out and `env` added, and give its stdout. A non-zero exit fails with its output;
    past `timeout` seconds it and its Ray's processes (one session) are killed and the
    test fails saying so."""
    environment = {k: v for k, v in os.environ.items() if k not in hidden} | (env or {})
    process = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=environment,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, _ = process.communicate()
        raise AssertionError(f"still waiting after {timeout:.0f} s; it said: {stdout}") from None
    assert process.returncode == 0, stdout + stderr[-3000:]
    return stdout


def said(stdout: str, word: str) -> list[list[str]]:
    """The lines of `stdout` that start with `word`, split."""
    return [line.split() for line in stdout.splitlines() if line.startswith(word)]


def niceness_in_a_fresh_process(script: str, env: dict[str, str] | None = None) -> tuple[int, int]:
    """Run `script`, which prints `niceness <its own> <the worker's>`; the two numbers."""
    stdout = run_script(script, env=env, hidden=("RAY_ADDRESS", "RAY_worker_niceness"))
    lines = said(stdout, "niceness")
    assert lines, stdout
    return int(lines[-1][1]), int(lines[-1][2])
