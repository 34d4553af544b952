"""Batch jobs that get killed, and engines that die: resume and restart, never loop for ever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rig_ray.batch import OutputFolder, run
from rig_ray.errors import GenerationError
from tests.batch.members import AlwaysDies, DiesOnce, SlowEcho, output_rows, rows

pytestmark = pytest.mark.usefixtures("local_ray")

REPO = Path(__file__).resolve().parents[2]
FAST = {"num_cpus": 0.25, "progress": False, "template": "$topic"}


def test_a_killed_job_run_again_ends_with_one_row_per_generation(tmp_path: Path) -> None:
    import ray

    source = rows(tmp_path / "in.jsonl", 30)
    out = tmp_path / "out"
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(REPO)!r})
            from rig_ray.batch import run
            from tests.batch.members import SlowEcho

            run({str(source)!r}, {str(out)!r}, generator=SlowEcho(model="slow", seconds=0.5),
                template="$topic", num_generations=2, batch_size=2, rows_per_part=4,
                num_cpus=0.25, progress=False, address={ray.get_runtime_context().gcs_address!r})
            """
        )
    )
    job = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(OutputFolder(str(out)).parts()) < 3:
            assert job.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline, "the job wrote no parts in time"
            time.sleep(0.2)
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    before = output_rows(out)  # every visible part is complete: each one reads
    assert 12 <= len(before) < 60  # killed halfway: some parts written, not all
    leftover = out / ".tmp-part-left-by-a-kill.parquet"
    leftover.write_bytes(b"half a part")  # what a kill during a write leaves

    again = run(
        str(source),
        str(out),
        generator=SlowEcho(model="slow", seconds=0),
        num_generations=2,
        batch_size=8,
        **FAST,
    )
    after = output_rows(out)
    keys = sorted((r["id"], r["generation_index"]) for r in after)
    assert keys == sorted((f"r{n}", g) for n in range(30) for g in range(2))
    assert again.skipped == len(before) and again.generations_written == 60 - len(before)
    assert not leftover.exists()
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no half-written files


def test_an_engine_that_dies_once_is_restarted_and_its_batch_retried(tmp_path: Path) -> None:
    source = rows(tmp_path / "in.jsonl", 6)
    marker = tmp_path / "died"
    summary = run(
        str(source),
        str(tmp_path / "out"),
        generator=DiesOnce(model="d", marker=str(marker)),
        batch_size=3,
        **FAST,
    )
    assert marker.exists()  # it did die
    assert (summary.generations_written, summary.failed) == (6, 0)
    assert sorted(r["text"] for r in output_rows(tmp_path / "out")) == [
        f"topic {n}" for n in range(6)
    ]


def test_an_engine_that_always_dies_stops_the_job_after_its_restarts(tmp_path: Path) -> None:
    source = rows(tmp_path / "in.jsonl", 4)
    log = tmp_path / "deaths"
    started = time.monotonic()
    with pytest.raises(GenerationError, match="run again to resume"):
        run(
            str(source),
            str(tmp_path / "out"),
            generator=AlwaysDies(model="x", log=str(log)),
            max_restarts=1,
            **FAST,
        )
    deaths = log.read_text().split()
    assert 1 <= len(deaths) <= 4, deaths  # bounded: no endless restart loop
    assert time.monotonic() - started < 120
