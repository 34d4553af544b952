"""Which Ray a batch job joins: a cluster that listens but never answers is a one-line error,
and a Ray of its own runs its workers (and so the engines) at the job's niceness."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fresh_process import niceness_in_a_fresh_process

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_cluster_that_never_answers_is_a_batch_input_error_after_the_timeout() -> None:
    # In a process of its own: the abandoned join keeps Ray half set up until the process ends.
    script = textwrap.dedent(
        """
        import socket, time
        from rig_ray.batch import placement
        from rig_ray.errors import BatchInputError

        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts connections, never speaks Ray's protocol
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        placement.JOIN_TIMEOUT_S = 3
        started = time.monotonic()
        try:
            placement.join(address)
        except BatchInputError as error:
            import threading, ray
            left = [t.name for t in threading.enumerate() if t.name == "rig_ray-join"]
            assert not left and not ray.is_initialized(), (left, ray.is_initialized())
            print(f"{time.monotonic() - started:.1f}|{address}|{error}", flush=True)
        """
    )
    # Ray's connect waits in C++, where the join's timer cannot interrupt it, for Ray's own
    # timeouts (30 s, and 5 s twice, by default); the timer's error is raised when it returns.
    # Those timeouts are shortened here to about 5 s in all, still longer than the join's 3 s.
    # The process then needs half a minute more to exit (Ray's abandoned join), so the result
    # line is read as it comes and the process is killed.
    env = {
        **os.environ,
        "RAY_py_gcs_connect_timeout_s": "3",
        "RAY_gcs_rpc_server_connect_timeout_s": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    try:
        assert process.stdout is not None
        result = next((line for line in process.stdout if "|" in line), "")
    finally:
        process.kill()
        _, stderr = process.communicate(timeout=60)
    assert result, stderr[-3000:]
    seconds, address, message = result.strip().split("|", 2)
    assert f"the Ray cluster at '{address}' did not answer within " in message
    said = int(message.split("did not answer within ")[1].split("s")[0])
    # The time it really took: Ray's connect waits (about 5 s here) outlast the 3 s timer;
    # the test's own clock stops later still (after the join has shut Ray down again).
    assert 4 <= said <= float(seconds) + 0.5
    assert 2.5 <= float(seconds) < 60


_NICENESS = """
import os, ray
from rig_ray.batch.placement import join

assert join(None)  # a Ray of its own

@ray.remote(num_cpus=0)
def niceness():
    return os.nice(0)

print("niceness", os.nice(0), ray.get(niceness.remote()), flush=True)
"""


@pytest.mark.parametrize(
    ("env", "increment"),
    [({}, 0), pytest.param({"RAY_worker_niceness": "7"}, 7, marks=pytest.mark.slow)],
    ids=["default", "set-in-the-environment"],
)
def test_a_ray_of_its_own_runs_its_workers_at_the_jobs_niceness(
    env: dict[str, str], increment: int
) -> None:
    """Ray's own default would start them 15 steps nicer than the job (in a process of its
    own: this one's Ray runs already)."""
    job, worker = niceness_in_a_fresh_process(_NICENESS, env)
    assert worker == min(job + increment, 19)
