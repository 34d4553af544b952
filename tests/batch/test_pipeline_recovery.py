"""A pipeline killed (SIGKILL) in its second stage, run again: the first stage is not run
again, and the second ends with exactly one row per (parent, generation)."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest

from rig_ray.batch import read_output, read_pipeline, run_pipeline
from tests.batch.pipeline_job import job_stages
from tests.batch.pipeline_members import loads

ROOT = Path(__file__).resolve().parents[2]


def _kill_all(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the job and every process under it."""
    import psutil

    under = psutil.Process(process.pid).children(recursive=True)
    os.killpg(process.pid, signal.SIGKILL)
    for child in under:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    process.wait(timeout=60)


def kill_in_stage_two(
    module_args: list[str], out: Path, env: dict[str, str], log: Path, within_s: float = 400
) -> None:
    """Run `python -m module_args...` in a session of its own, and SIGKILL it with everything
    under it once stage 2 (`judge`) has written its first part."""
    with log.open("wb") as sink:
        job = subprocess.Popen(
            [sys.executable, "-m", *module_args],
            cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT)},
            start_new_session=True,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + within_s
        while not list((out / "judge").glob("part-*.parquet")):  # stage 2 has begun writing
            assert job.poll() is None, log.read_text()[-3000:]  # it ended before stage 2 wrote
            assert time.monotonic() < deadline, "stage 2 wrote nothing in time"
            time.sleep(0.05)
    finally:
        if job.poll() is None:
            _kill_all(job)


def judged_once_each(out: Path, questions: int) -> list[dict[str, t.Any]]:
    """Stage 2's rows, checked to be exactly one per (parent, generation)."""
    rows = read_output(str(out / "judge")).to_pylist()
    counts = collections.Counter((row["id"], row["generation_index"]) for row in rows)
    assert sorted(counts) == [(f"q{n}/{g}", 0) for n in range(questions) for g in range(2)]
    assert set(counts.values()) == {1}
    return rows


@pytest.mark.slow
def test_killed_in_stage_two_resumes_stage_two_only(tmp_path: Path, local_ray: t.Any) -> None:
    source = tmp_path / "q.jsonl"
    source.write_text(
        "".join(json.dumps({"id": f"q{n}", "question": f"question {n}"}) + "\n" for n in range(4))
    )
    out = tmp_path / "out"
    # The job joins the session's Ray: its actors die with it, and no Ray starts twice.
    address = local_ray.get_runtime_context().gcs_address
    kill_in_stage_two(
        ["tests.batch.pipeline_job", str(source), str(out), str(tmp_path)],
        out,
        {**os.environ, "RAY_ADDRESS": address},
        tmp_path / "job.log",
    )
    written = len(read_output(str(out / "judge")))
    assert 0 < written < 8  # killed halfway through stage 2
    answer_loads = loads(tmp_path / "answer.log")
    assert answer_loads == 2
    summary = run_pipeline(
        str(source), str(out), stages=job_stages(tmp_path), gpu_sharing="swap", progress=False
    )
    assert loads(tmp_path / "answer.log") == answer_loads  # stage 1 was not loaded again
    assert not summary.stage("answer").loaded
    assert summary.stage("answer").generations_written == 0
    assert summary.stage("judge").generations_written == 8 - written
    judged_once_each(out, 4)
    assert read_pipeline(str(out)).num_rows == 8
