"""Stream mode merges each stage's small parts at the end of a run: a merge killed before it
deleted the parts it replaced, and runs after a merge (the next stage resuming, a stage
added, `retry_failed`), each leave exactly one row per (id, generation_index)."""

from __future__ import annotations

import collections
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rig_ray.batch import Stage, read_output, read_pipeline, run_pipeline
from rig_ray.batch.output import OutputFolder
from tests.batch.pipeline_members import Answerer, loads, questions
from tests.batch.test_pipeline import stages

pytestmark = pytest.mark.usefixtures("local_ray")


class Killed(Exception):
    pass


def once_each(folder: Path) -> list[tuple[str, int]]:
    """The folder's (id, generation_index) keys, checked to be one row each."""
    rows = read_output(str(folder), columns=["id", "generation_index"]).to_pylist()
    counts = collections.Counter((row["id"], row["generation_index"]) for row in rows)
    assert set(counts.values()) == {1}, counts
    return sorted(counts)


def parts(folder: Path) -> int:
    return len(list(folder.glob("part-*.parquet")))


def drop(folder: Path, row_id: str) -> None:
    """Take `row_id`'s rows out of the folder's parts (as if never made)."""
    for path in folder.glob("part-*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.filter(pc.not_equal(table.column("id"), row_id)), path)


@pytest.mark.slow
def test_a_killed_merge_is_undone_and_the_next_stage_resumes_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, out = str(questions(tmp_path / "q.jsonl")), tmp_path / "out"

    def killed(self: OutputFolder, part: str) -> None:
        raise Killed(part)

    with monkeypatch.context() as patched:  # killed once answer's merged part is written
        patched.setattr(OutputFolder, "_delete", killed)
        with pytest.raises(Killed):
            run_pipeline(
                source, str(out), stages=stages(tmp_path), gpu_sharing="stream", progress=False
            )
    assert len(read_output(str(out / "answer"))) > 6  # rows twice: merged and not deleted
    drop(out / "judge", "q0/1")  # and one judged row is missing
    again = run_pipeline(
        source, str(out), stages=stages(tmp_path), gpu_sharing="stream", progress=False
    )
    answer, judge = again.stage("answer"), again.stage("judge")
    assert (answer.loaded, answer.generations_written) == (False, 0)
    assert loads(tmp_path / "answer.log") == 2  # stage 1 did not run again
    assert (judge.generations_written, judge.skipped) == (1, 3)  # only the missing row
    assert once_each(out / "answer") == [(f"q{n}", g) for n in range(3) for g in range(2)]
    assert once_each(out / "judge") == [(f"q{n}/{g}", 0) for n in range(2) for g in range(2)]
    assert (parts(out / "answer"), parts(out / "judge")) == (1, 1)
    assert read_pipeline(str(out)).num_rows == 4


@pytest.mark.slow
def test_retry_failed_and_a_stage_added_after_a_merge(tmp_path: Path) -> None:
    source, out = str(questions(tmp_path / "q.jsonl")), tmp_path / "out"
    run_pipeline(source, str(out), stages=stages(tmp_path), gpu_sharing="stream", progress=False)
    assert (parts(out / "answer"), parts(out / "judge")) == (1, 1)
    answer, judge = stages(tmp_path)
    added = Stage("echo", generator=Answerer(model="e"), template="$text")
    chain = [answer.model_copy(update={"retry_failed": True}), judge, added]
    summary = run_pipeline(source, str(out), stages=chain, gpu_sharing="stream", progress=False)
    # q2's two answers fail again (the judge skips them); the added stage runs on the rest
    assert [s.generations_written for s in summary.stages] == [2, 0, 2]
    assert once_each(out / "answer") == [(f"q{n}", g) for n in range(3) for g in range(2)]
    assert once_each(out / "echo") == [("q0/0/0", 0), ("q0/1/0", 0)]
    assert [parts(out / name) for name in ("answer", "judge", "echo")] == [1, 1, 1]
    assert read_pipeline(str(out)).num_rows == 2
