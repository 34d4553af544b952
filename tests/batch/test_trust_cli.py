"""An output folder you can trust, through `rig-ray batch` in a subprocess on a real local Ray:
one-line refusals with exit 2, no secret on any stream or in any file, --retry-failed, a run
that fits a small machine, a clean stop on SIGTERM, and one run per folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.batch.members import output_rows, rows

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-DO-NOT-LEAK-4242"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.batch.fake_cli", "batch", *args]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(*args), capture_output=True, text=True, cwd=REPO, env=_env(), timeout=timeout
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("rig-ray: error:")]


@pytest.fixture(scope="module")
def address(local_ray: object) -> str:
    import ray

    return str(ray.get_runtime_context().gcs_address)


@pytest.mark.slow
def test_a_changed_template_is_refused_with_one_line(tmp_path: Path, address: str) -> None:
    source, out = rows(tmp_path / "in.jsonl", 2), tmp_path / "out"
    common = ["--generator", "echo!e", "--num-cpus", "0.25", "--address", address, "--quiet"]
    done = _cli(str(source), str(out), *common, "--template", "About $topic")
    assert done.returncode == 0, done.stderr
    refused = _cli(str(source), str(out), *common, "--template", "On $topic")
    assert refused.returncode == 2, refused.stderr
    (line,) = _error_lines(refused.stderr)
    assert "template differs from the run that made the output folder" in line
    assert "Traceback" not in refused.stderr
    assert len(output_rows(out)) == 2


@pytest.mark.slow
def test_no_secret_on_any_stream_or_in_any_file(tmp_path: Path, address: str) -> None:
    source, out = rows(tmp_path / "in.jsonl", 2, topic="FAIL"), tmp_path / "out"
    identifier = f"failing!e,api_key={SECRET},api_base=https://me:{SECRET}@example.com/v1"
    common = ["--template", "$topic", "--num-cpus", "0.25", "--address", address]
    done = _cli(str(source), str(out), "--generator", identifier, *common)
    assert done.returncode == 1, done.stderr  # the rows failed, and say so
    assert "echo" not in done.stdout and "failing!e,api_base=https://me:***@" in done.stdout
    bad = _cli(str(source), str(out), "--generator", identifier + ",top_p=7", *common)
    assert bad.returncode == 2 and "top_p" in _error_lines(bad.stderr)[0]
    for stream in (done.stdout, done.stderr, bad.stdout, bad.stderr):
        assert SECRET not in stream
    for path in out.iterdir():
        assert SECRET.encode() not in path.read_bytes(), path.name


@pytest.mark.slow
def test_retry_failed_from_the_command_line(tmp_path: Path, address: str) -> None:
    source, out = rows(tmp_path / "in.jsonl", 3), tmp_path / "out"
    rows(source, 1, start=3, topic="FAIL")
    fixed = tmp_path / "fixed"
    common = ["--generator", f"fixable!f,fixed={fixed}", "--template", "$topic"]
    common += ["--num-cpus", "0.25", "--address", address, "--quiet"]
    first = _cli(str(source), str(out), *common)
    assert first.returncode == 1
    assert "1 failed rows in the output: run again with --retry-failed" in first.stdout
    fixed.write_text("")
    retried = _cli(str(source), str(out), *common, "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    assert "1 generations written (0 failed), 3 skipped" in retried.stdout
    got = output_rows(out)
    assert sorted(r["id"] for r in got) == ["r0", "r1", "r2", "r3"]
    assert all(r["error"] is None for r in got)


@pytest.mark.slow  # starts two Rays of its own
def test_three_generators_at_the_defaults_fit_a_small_machine(tmp_path: Path) -> None:
    source, out = rows(tmp_path / "in.jsonl", 6), tmp_path / "out"
    gens = ["--generator", "echo!a", "--generator", "echo!b", "--generator", "echo!c"]
    done = _cli(str(source), str(out), *gens, "--template", "$topic", "--num-generations", "3",
                "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(output_rows(out)) == 18
    too_big = _cli(str(source), str(tmp_path / "big"), "--generator", "echo!a",
                   "--template", "$topic", "--num-cpus", "64", "--quiet")  # fmt: skip
    assert too_big.returncode == 2
    (line,) = _error_lines(too_big.stderr)
    assert "cannot be placed: 1 actor(s) needing 64 CPU each" in line


def test_an_address_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    source = rows(tmp_path / "in.jsonl", 1)
    started = time.monotonic()
    done = _cli(str(source), str(tmp_path / "out"), "--generator", "echo!e",
                "--address", "127.0.0.1:9")  # fmt: skip
    assert done.returncode == 2
    (line,) = _error_lines(done.stderr)
    assert "Ray cluster at '127.0.0.1:9'" in line
    assert time.monotonic() - started < 60


@pytest.mark.slow  # three runs, one of them stopped halfway
def test_sigterm_writes_what_it_has_and_a_busy_folder_is_refused(
    tmp_path: Path, address: str
) -> None:
    source, out = rows(tmp_path / "in.jsonl", 40), tmp_path / "out"
    common = ["--template", "$topic", "--num-cpus", "0.25", "--address", address]
    common += ["--batch-size", "2", "--max-concurrent-batches", "1", "--quiet"]
    job = subprocess.Popen(
        _command(str(source), str(out), "--generator", "slow!s,seconds=0.5", *common),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("_rig_ray.lock")):
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()
            time.sleep(0.1)
        busy = _cli(str(source), str(out), "--generator", "slow!s,seconds=0.5", *common)
        assert busy.returncode == 2
        (line,) = _error_lines(busy.stderr)
        assert "is in use by another run (pid" in line and f"pid {job.pid} " in line
        time.sleep(3)
        job.send_signal(signal.SIGTERM)
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 143, stderr
    assert "Run the same command again to resume." in stderr
    assert "Traceback" not in stderr and "Stack trace" not in stderr and "***" not in stderr
    written = len(output_rows(out))
    assert 0 < written < 40
    again = _cli(str(source), str(out), "--generator", "slow!s,seconds=0.5", *common)
    assert again.returncode == 0, again.stderr
    assert sorted(r["id"] for r in output_rows(out)) == sorted(f"r{n}" for n in range(40))
    assert json.loads((out / "_rig_ray_manifest.json").read_text())["num_generations"] == 1
