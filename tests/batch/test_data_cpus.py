"""A batch job beside engines that hold every CPU: with `data_cpus=0` it still runs to the end.
And one on a Ray of a single CPU runs to the end with no setting at all.

A `/v1/batches` job runs on the cluster of the Serve replicas it sends its rows to; they may
hold every CPU. Ray Data's tasks ask one CPU each by default and would wait forever.
"""

from __future__ import annotations

import json
import threading
import typing as t
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from rig_ray import batch
from tests.fakes import EchoGenerator
from tests.fresh_process import run_script, said

pytestmark = pytest.mark.usefixtures("local_ray")

WAIT_S = 180.0
"""Far longer than these few rows take: a job still running then waits for a CPU."""


def _inputs(folder: Path) -> dict[str, str]:
    rows = [
        {"id": f"r{i}", "prompt": f"say {i}", "route": "a" if i % 2 else "b"} for i in range(12)
    ]
    jsonl = folder / "in.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, folder / "in.parquet")
    pacsv.write_csv(table, folder / "in.csv")
    return {kind: str(folder / f"in.{kind}") for kind in ("jsonl", "parquet", "csv")}


def _finishes(job: t.Callable[[], batch.BatchSummary]) -> batch.BatchSummary:
    done: list[batch.BatchSummary] = []
    thread = threading.Thread(target=lambda: done.append(job()), daemon=True)
    thread.start()
    thread.join(WAIT_S)
    assert done, f"the job still waits after {WAIT_S:.0f} s: a task asks for a CPU"
    return done[0]


@pytest.mark.slow
@pytest.mark.usefixtures("every_cpu_held")
def test_a_job_with_data_cpus_0_runs_while_every_cpu_is_held(tmp_path: Path) -> None:
    for kind, source in _inputs(tmp_path).items():
        output = tmp_path / f"out-{kind}"
        summary = _finishes(
            lambda source=source, output=output: batch.run(
                source,
                str(output),
                generator=EchoGenerator(model="echo"),
                num_cpus=0,
                data_cpus=0,
                batch_size=4,
                progress=False,
            )
        )
        assert summary.generations_written == 12 and summary.failed == 0, (kind, summary)
        rows = batch.read_output(str(output)).to_pylist()
        assert sorted(row["id"] for row in rows) == sorted(f"r{i}" for i in range(12)), kind
    # Rows routed to two generators by a column: one filter and one cut into batches each.
    routed = _finishes(
        lambda: batch.run(
            str(tmp_path / "in.jsonl"),
            str(tmp_path / "out-routed"),
            generators=[EchoGenerator(model="a"), EchoGenerator(model="b")],
            route_column="route",
            routes=["a", "b"],
            num_cpus=0,
            data_cpus=0,
            batch_size=4,
            progress=False,
        )
    )
    assert routed.generations_written == 12, routed
    models = {
        row["id"]: row["model"]
        for row in batch.read_output(str(tmp_path / "out-routed")).to_pylist()
    }
    assert all(models[f"r{i}"] == ("a" if i % 2 else "b") for i in range(12)), models


_ONE_CPU = """
import json, sys
import ray
from rig_ray import batch
from tests.fakes import EchoGenerator

ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
folder = sys.argv[1]
for kind, num_cpus in (("jsonl", None), ("csv", 0.2), ("parquet", None)):
    summary = batch.run(
        f"{folder}/in.{kind}", f"{folder}/out-{kind}", generator=EchoGenerator(model="echo"),
        template="$prompt", num_cpus=num_cpus, progress=False,
    )
    print("done", kind, summary.generations_written, flush=True)
for mode in ("swap", "stream"):  # a stage's engines hold their CPU while it reads its input
    stages = [
        batch.Stage("answer", generator=EchoGenerator(model="a"), template="$prompt"),
        batch.Stage("judge", generator=EchoGenerator(model="j"), template="J: $text"),
    ]
    ran = batch.run_pipeline(
        f"{folder}/in.parquet", f"{folder}/pipeline-{mode}", stages=stages, gpu_sharing=mode,
        progress=False,
    )
    print("done", mode, ran.stages[-1].generations_written, flush=True)
"""


def test_a_job_on_a_ray_of_one_cpu_runs_to_the_end(tmp_path: Path) -> None:
    """Half the CPU stays free of the actors, and Ray Data's tasks ask that half, not the
    whole CPU they ask by default (with which they waited forever); Parquet is read by the
    driver, as Ray Data's Parquet reader takes a whole CPU for its own tasks. Plain jobs and
    a two-stage pipeline in both modes. In a process of its own: this one's Ray has two."""
    _inputs(tmp_path)
    stdout = run_script(_ONE_CPU, str(tmp_path), timeout=WAIT_S)
    kinds = ("jsonl", "csv", "parquet", "swap", "stream")
    assert said(stdout, "done") == [["done", kind, "12"] for kind in kinds]
