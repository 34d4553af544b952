"""`ray job submit` of jobs/batch_generate.py to a real local head, the way a cluster runs it.

The head is this module's own: its own temp dir, ports and auth token, and its processes are
found by a marker in their environment and killed at the end, so a Ray that anything else on
the machine runs is left alone (a bare `ray stop` would kill every Ray here).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import typing as t
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
GENERATOR = "transformers!smollm2-135m,max_tokens=8,temperature=0"
NAMES = {"a": "Ann", "b": "Bob", "c": "Cy", "d": "Di"}
MARKER = "RIG_RAY_TEST_HEAD"
"""Set in the environment of `ray start`; every process of the head inherits it."""
SUBMIT_TIMEOUT_S = 240


@dataclass(frozen=True)
class Head:
    """A running local head: its job API and the environment a client needs to reach it."""

    dashboard: str
    token: str
    env: dict[str, str]

    def submit(self, *args: str, submission_id: str | None = None) -> subprocess.CompletedProcess:
        """`ray job submit` jobs/batch_generate.py with `args`, waiting for the job to end."""
        command = [RAY, "job", "submit", "--address", self.dashboard, "--working-dir", str(REPO)]
        command += ["--runtime-env", "jobs/runtime_env.yaml"]
        command += ["--submission-id", submission_id] if submission_id else []
        command += ["--", "python", "jobs/batch_generate.py", *args]
        return self.ray(command)

    def job(self, submission_id: str) -> dict[str, t.Any]:
        """The job API's record of a job."""
        return get_json(f"{self.dashboard}/api/jobs/{submission_id}", self.token)

    def ray(self, command: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            command,
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=SUBMIT_TIMEOUT_S,
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def head_processes(marker: str) -> list[psutil.Process]:
    """The live processes of the head started with `marker` (zombies count as gone)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid == os.getpid() or process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get(MARKER) == marker:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def stop_head(marker: str) -> None:
    """Kill every process of this head only; fail if one survives.

    Its state is thrown away, so there is no SIGTERM first (gcs_server and raylet can sit one
    out for long: `ray stop` waits 16 s for them).
    """
    # Polled rather than psutil.wait_procs, which counts a zombie as alive; killed again on
    # each round, in case one was starting a process of its own meanwhile.
    deadline = time.monotonic() + 15
    while (left := head_processes(marker)) and time.monotonic() < deadline:
        for process in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        time.sleep(0.1)
    left = head_processes(marker)
    assert not left, f"processes of the test head survived: {[p.pid for p in left]}"


def get_json(url: str, token: str) -> t.Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wait_for_job_api(dashboard: str, token: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            get_json(f"{dashboard}/api/jobs/", token)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="module")
def head(smollm2_path: Path) -> t.Iterator[Head]:
    """A local head with a dashboard, its workers able to load the embedded model offline."""
    temp_dir = tempfile.mkdtemp(prefix="rr")  # short: Ray's socket paths must fit 107 chars
    token = secrets.token_hex(32)
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    # Ray turns token auth on for a new head when ~/.ray/auth_token exists; a token of our own
    # keeps the test independent of that file.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    head_env = {
        **env,
        MARKER: temp_dir,
        # The job's entrypoint is `python ...`, found on the head's PATH, as on a cluster.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RIG_RAY_CACHE": str(smollm2_path.parent),  # where the fixture converted the model
    }
    dashboard_port = free_port()
    command = [RAY, "start", "--head", "--num-cpus=2", "--disable-usage-stats"]
    command += [f"--port={free_port()}", f"--ray-client-server-port={free_port()}"]
    command += [f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1"]
    command += ["--include-dashboard=true", f"--dashboard-agent-listen-port={free_port()}"]
    command += [f"--temp-dir={temp_dir}"]
    try:
        started = subprocess.run(command, env=head_env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        dashboard = f"http://127.0.0.1:{dashboard_port}"
        wait_for_job_api(dashboard, token)
        yield Head(dashboard=dashboard, token=token, env=env)
    finally:
        stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": i, "name": n}) + "\n" for i, n in NAMES.items()))
    return path


def read_output(folder: Path) -> pa.Table:
    parts = sorted(folder.glob("part-*.parquet"))
    assert parts, f"no Parquet parts in {folder}"
    return pa.concat_tables(pq.read_table(part) for part in parts)


@pytest.mark.slow
def test_submitted_job_writes_every_row_then_resumes(
    head: Head, prompts: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    args = (str(prompts), str(output), "--generator", GENERATOR)
    args += ("--template", "Say hi to $name.", "--num-cpus", "0.5")

    job = f"rig-ray-batch-{uuid.uuid4().hex[:8]}"
    first = head.submit(*args, submission_id=job)
    assert first.returncode == 0, first.stdout + first.stderr
    # The driver joined this cluster (through RAY_ADDRESS) rather than starting a Ray of its own.
    assert head.job(job)["driver_info"] is not None
    assert "4 generations written (0 failed)" in first.stdout
    table = read_output(output)
    assert sorted(table.column("id").to_pylist()) == sorted(NAMES)
    assert table.column("error").null_count == table.num_rows
    assert all(text.strip() for text in table.column("text").to_pylist())

    again = head.submit(*args)  # the cluster outlived the first job's driver
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 generations written (0 failed), 4 skipped" in again.stdout
    assert read_output(output).num_rows == table.num_rows


@pytest.mark.slow  # the CLI test of a missing column covers the message; this, the job path
def test_submitted_job_with_a_missing_column_fails_in_one_line(
    head: Head, prompts: Path, tmp_path: Path
) -> None:
    job = f"rig-ray-missing-{uuid.uuid4().hex[:8]}"
    args = (str(prompts), str(tmp_path / "out"), "--generator", GENERATOR)
    submitted = head.submit(*args, "--template", "Say hi to $nobody.", submission_id=job)
    assert submitted.returncode != 0, submitted.stdout + submitted.stderr
    assert f"Job '{job}' failed" in submitted.stdout + submitted.stderr

    logs = head.ray([RAY, "job", "logs", "--address", head.dashboard, job])
    assert logs.returncode == 0, logs.stdout + logs.stderr
    errors = [line for line in logs.stdout.splitlines() if line.startswith("rig-ray: error:")]
    assert len(errors) == 1, logs.stdout
    assert "'nobody'" in errors[0]
    assert "Traceback" not in logs.stdout
    assert not list((tmp_path / "out").glob("*.parquet"))
