"""`run_pipeline` / `read_pipeline` on a local Ray with fake generators: ids, parent ids,
skipped parents, prefixes, resume per stage, refusal of changed stages, both modes."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from rig_ray import PipelineError
from rig_ray.batch import Stage, json_input, read_output, read_pipeline, run_pipeline
from rig_ray.batch.lock import FolderLock
from tests.batch.pipeline_members import (
    SCORE_SCHEMA,
    Answerer,
    FailingAnswerer,
    Judge,
    PidAnswerer,
    loads,
    questions,
)

pytestmark = pytest.mark.usefixtures("local_ray")


def stages(tmp: Path, **judge: t.Any) -> list[Stage]:
    return [
        Stage(
            "answer",
            generators=[
                FailingAnswerer(model="a", log=str(tmp / "answer.log")),
                FailingAnswerer(model="b", log=str(tmp / "answer.log")),
            ],
            template="Answer: $question",
            num_generations=2,
            batch_size=2,
        ),
        Stage(
            "judge",
            generator=Judge(model="j", log=str(tmp / "judge.log")),
            template=judge.pop("template", "Q: $question A: $text"),
            json_schema=SCORE_SCHEMA,
            **judge,
        ),
    ]


def keys(rows: list[dict[str, t.Any]]) -> list[tuple[str, int]]:
    return sorted((row["id"], row["generation_index"]) for row in rows)


# The swap variant is covered by the default tests of swap mode: later stages' prefixes and
# skipped parents (test_later_stages_see_prefixes_and_keep_errors_when_asked, on fakes) and
# ids, parent ids and typed columns on real engines
# (test_pipeline_engines.py::test_swap_two_stages_on_vllm_and_transformers).
@pytest.mark.parametrize("mode", [pytest.param("swap", marks=pytest.mark.slow), "stream"])
def test_two_stages_ids_parents_skips_and_typed_columns(tmp_path: Path, mode: str) -> None:
    source = questions(tmp_path / "q.jsonl")
    out = tmp_path / "out"
    summary = run_pipeline(
        str(source), str(out), stages=stages(tmp_path), gpu_sharing=mode, progress=False
    )
    assert summary.gpu_sharing == mode
    answer, judge = summary.stage("answer"), summary.stage("judge")
    assert (answer.generations_written, answer.failed) == (6, 2)  # q2 FAIL, both generations
    assert (judge.generations_written, judge.failed) == (4, 2)  # q2's skipped; q1 does not parse
    assert answer.loaded and judge.loaded
    rows = read_output(str(out / "judge")).to_pylist()
    assert keys(rows) == [("q0/0", 0), ("q0/1", 0), ("q1/0", 0), ("q1/1", 0)]
    assert {row["id"]: row["parent_id"] for row in rows} == {
        "q0/0": "q0", "q0/1": "q0", "q1/0": "q1", "q1/1": "q1",
    }  # fmt: skip
    final = read_pipeline(str(out))
    assert final.num_rows == 4
    assert final.schema.field("score").type == pa.int64()
    for row in final.to_pylist():
        parent = row["parent_id"]
        assert row["answer_id"] == parent and row["question"].startswith(f"question {parent[1]}")
        assert row["answer_text"] == f"Answer: {row['question']}"  # the earlier stage, prefixed
        assert row["text"] == ("not JSON" if "BAD" in row["question"] else '{"score": 7}')
        if row["error"] is None:
            assert row["score"] == 7  # "Q: question 0 A: Answer: question 0" is 7 words
        else:
            assert row["score"] is None and "JSON" in row["error"]
    assert "input_text" not in final.column_names  # the answer's text is answer_text there
    if mode == "stream":  # a part per batch of 2 rows, merged once the pipeline was done
        assert answer.merged >= 2 and answer.merged_into == 1
        assert f"merged {answer.merged} parts into 1" in answer.line()
        answers = read_output(str(out / "answer")).to_pylist()
        assert keys(answers) == sorted((f"q{n}", g) for n in range(3) for g in range(2))
        assert sum(row["error"] is not None for row in answers) == 2  # q2's, as written
    for stage in ("answer", "judge"):
        assert len(list((out / stage).glob("part-*.parquet"))) == 1


@pytest.mark.slow
def test_later_stages_see_prefixes_and_keep_errors_when_asked(tmp_path: Path) -> None:
    source = questions(tmp_path / "q.jsonl")
    out = tmp_path / "out"
    chain = [
        *stages(tmp_path),
        Stage(
            "echo",
            generator=Answerer(model="e"),
            template="$text|$answer_text|$judge_score|$question",
        ),
        Stage(
            "kept",
            generator=Answerer(model="k"),
            template="$echo_text|$question",
            on_error="keep",
        ),
    ]
    summary = run_pipeline(str(source), str(out), stages=chain, gpu_sharing="swap", progress=False)
    assert summary.stage("echo").generations_written == 2  # judge's parse failures skipped
    echo = sorted(read_output(str(out / "echo")).to_pylist(), key=lambda r: r["id"])
    assert [row["id"] for row in echo] == ["q0/0/0", "q0/1/0"]
    assert echo[0]["text"] == '{"score": 7}|Answer: question 0|7|question 0'
    assert echo[0]["parent_id"] == "q0/0"
    final = read_pipeline(str(out))
    assert final.num_rows == 2
    assert {"answer_text", "judge_score", "echo_text", "parent_id"} <= set(final.column_names)


@pytest.mark.slow
def test_resume_per_stage_added_stage_alone_and_changed_stage_refused(tmp_path: Path) -> None:
    source = questions(tmp_path / "q.jsonl")
    out = str(tmp_path / "out")
    first = run_pipeline(str(source), out, stages=stages(tmp_path), progress=False)
    answer_loads, judge_loads = loads(tmp_path / "answer.log"), loads(tmp_path / "judge.log")
    assert (answer_loads, judge_loads) == (2, 1)
    again = run_pipeline(str(source), out, stages=stages(tmp_path), progress=False)
    for stage in again.stages:  # complete: nothing made, no model loaded
        assert (stage.generations_written, stage.loaded) == (0, False)
    assert (loads(tmp_path / "answer.log"), loads(tmp_path / "judge.log")) == (2, 1)
    added = Stage("echo", generator=Answerer(model="e", log=str(tmp_path / "echo.log")))
    grown = run_pipeline(
        str(source),
        out,
        stages=[*stages(tmp_path), added.model_copy(update={"template": "$text"})],
        progress=False,
    )
    assert (loads(tmp_path / "answer.log"), loads(tmp_path / "judge.log")) == (2, 1)
    assert loads(tmp_path / "echo.log") == 1
    assert grown.stage("echo").generations_written == 2
    assert first.stage("judge").generations_written == 4
    # A run of the first stage alone leaves the later stages in the record: still joined.
    alone = run_pipeline(str(source), out, stages=stages(tmp_path)[:1], progress=False)
    assert [stage.name for stage in alone.stages] == ["answer"]
    joined = read_pipeline(out)
    assert joined.num_rows == 2 and {"answer_text", "judge_score"} <= set(joined.column_names)
    parts = sorted(p.name for p in (tmp_path / "out" / "answer").iterdir())
    with pytest.raises(PipelineError, match=r"stage 'judge'.*template") as refused:
        run_pipeline(
            str(source),
            out,
            stages=stages(tmp_path, template="Rate: $text"),
            progress=False,
        )
    assert refused.value.stage == "judge"
    assert sorted(p.name for p in (tmp_path / "out" / "answer").iterdir()) == parts
    assert (loads(tmp_path / "answer.log"), loads(tmp_path / "judge.log")) == (2, 1)


@pytest.mark.slow
def test_on_error_keep_then_reordered_stages_and_bad_options_are_refused(tmp_path: Path) -> None:
    source = questions(tmp_path / "q.jsonl")
    out = str(tmp_path / "out")
    one, two = stages(tmp_path)
    kept = Stage("kept", generator=Answerer(model="k"), template="$question", on_error="keep")
    run_pipeline(str(source), out, stages=[one, kept], gpu_sharing="swap", progress=False)
    assert read_pipeline(out).num_rows == 6  # q2's failed answers passed on too
    with pytest.raises(PipelineError, match="stage 1 is 'judge'"):
        run_pipeline(str(source), out, stages=[two, one], progress=False)
    with pytest.raises(PipelineError, match="two stages are named"):
        run_pipeline(str(source), out, stages=[one, one], progress=False)
    with pytest.raises(PipelineError, match="gpu_sharing"):
        run_pipeline(str(source), out, stages=[one], gpu_sharing="share", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stage name"):
        Stage("no spaces", generator="echo!x")
    with pytest.raises(ValueError, match="either generator"):
        Stage("x")


@pytest.mark.slow
def test_stream_rounds_take_the_new_rows_as_the_stage_before_makes_them(tmp_path: Path) -> None:
    source = questions(tmp_path / "q.jsonl", count=4)
    out = tmp_path / "out"
    slow = Stage(
        "answer",
        generator=Answerer(model="a", seconds=1.5),  # a part per row, one every 1.5 s
        template="Answer: $question",
        num_generations=2,
        batch_size=1,
        max_concurrent_batches=1,
    )
    judge = Stage("judge", generator=Judge(model="j"), template="Q: $question A: $text")
    summary = run_pipeline(
        str(source), str(out), stages=[slow, judge], gpu_sharing="stream", progress=False
    )
    answer_rows = read_output(str(out / "answer")).to_pylist()
    judged = summary.stage("judge")
    assert judged.rounds >= 2  # rounds as the rows came (how many depends on the timing)
    assert judged.generations_written == len(answer_rows) == 8  # each row judged once
    assert judged.rows_in == 8  # the last round read the whole input
    rows = read_output(str(out / "judge")).to_pylist()
    assert keys(rows) == sorted((f"q{n}/{g}", 0) for n in range(4) for g in range(2))
    subfolders = [p for p in (out / "_inputs" / "judge").iterdir() if p.is_dir()]
    assert subfolders and all(p.name.isdigit() for p in subfolders)  # a subfolder per update
    made = [f for p in subfolders for f in p.glob("*.parquet")]
    assert len(made) == len(list((out / "answer").glob("part-*.parquet")))  # one per part


def test_a_failed_later_stage_stops_the_stage_before_keeping_what_it_wrote(
    tmp_path: Path,
) -> None:
    """Stream mode: the judge's first round fails (another run holds its folder) while the
    answer stage has most of its rows still to make (0.3 s a row, one at a time, 200 rows:
    a minute by construction). The answer stage ends after the batch it is writing instead
    of running to its end, its rows written so far stay, and the pipeline raises the judge's
    error."""
    source = questions(tmp_path / "q.jsonl", count=200)
    out = tmp_path / "out"
    slow = Stage(
        "answer",
        generator=Answerer(model="a", seconds=0.3),
        template="Answer: $question",
        batch_size=1,
        max_concurrent_batches=1,
        seconds_per_part=0.1,
    )
    judge = Stage("judge", generator=Judge(model="j"), template="Q: $question A: $text")
    held = FolderLock(pafs.LocalFileSystem(), str(out / "judge"), str(out / "judge"))
    with held, pytest.raises(PipelineError, match=r"stage 'judge'.*another run"):
        run_pipeline(
            str(source), str(out), stages=[slow, judge], gpu_sharing="stream", progress=False
        )
    answered = read_output(str(out / "answer")).num_rows
    assert 0 < answered < 200  # stopped early; what it made stays


@pytest.mark.parametrize("kind", [pytest.param("chat", marks=pytest.mark.slow), "text"])
def test_a_stage_with_replicas_spreads_its_rows_over_them(tmp_path: Path, kind: str) -> None:
    """Chat rows and text rows (those with a `text_column` value) alike go to every one of
    the stage's engine actors, not only the first. One kind a run: the stage's calls go round
    the engines in turn whatever their kind, so rows of both kinds in turn would each meet
    one engine only."""
    source = tmp_path / "q.jsonl"
    raw = "r" if kind == "text" else None
    rows = [{"id": f"q{n}", "question": "q", "raw": raw} for n in range(16)]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    stage = Stage(
        "answer",
        generator=PidAnswerer(model="p"),
        template="$question",
        text_column="raw",
        replicas=2,
        batch_size=1,
    )
    run_pipeline(str(source), str(tmp_path / "out"), stages=[stage], progress=False)
    made = read_output(str(tmp_path / "out" / "answer")).to_pylist()
    assert len(made) == 16
    assert len({row["text"] for row in made}) == 2  # the process ids of the engines that made them


@pytest.mark.slow
def test_a_last_stage_with_no_rows_reads_as_an_empty_table(tmp_path: Path) -> None:
    """Every answer fails: the judge has nothing to take, and the result has no rows (found
    by the stateful search in test_pipeline_stateful.py)."""
    source = tmp_path / "q.jsonl"
    source.write_text('{"id": "q0", "question": "rock FAIL"}\n')
    out = str(tmp_path / "out")
    summary = run_pipeline(
        str(source), out, stages=stages(tmp_path), gpu_sharing="swap", progress=False
    )
    assert summary.stage("answer").failed == 2
    assert summary.stage("judge").generations_written == 0
    final = read_pipeline(out)
    assert final.num_rows == 0
    assert {"id", "generation_index", "text", "error"} <= set(final.column_names)
    assert {"parent_id", "question", "answer_text"} <= set(final.column_names)  # as carried


def test_a_first_stage_field_first_held_past_the_first_rows_is_a_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JSON key that only a row past those read before the job runs holds: the first
    stage takes it as a column, and the stage after sees it. (The driver reads the keys of
    3 rows here, not 10,000: `batch.run` is tested at the real size in
    test_input_columns.py.)"""
    monkeypatch.setattr(json_input, "ROWS_PER_BLOCK", 3)
    source = tmp_path / "q.jsonl"
    rows: list[dict[str, t.Any]] = [{"id": f"q{n}", "question": f"question {n}"} for n in range(5)]
    rows[-1]["hint"] = "HINT"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    chain = [
        Stage("answer", generator=Answerer(model="a"), template="$question $hint"),
        Stage("echo", generator=Answerer(model="e"), template="$text|$hint"),
    ]
    out = str(tmp_path / "out")
    summary = run_pipeline(str(source), out, stages=chain, gpu_sharing="swap", progress=False)
    assert summary.stage("answer").failed == 4  # their hint is null
    final = read_pipeline(out).to_pylist()
    assert [(row["id"], row["text"]) for row in final] == [("q4/0", "question 4 HINT|HINT")]


@pytest.mark.slow
def test_a_refused_stage_leaves_every_input_as_it_was(tmp_path: Path) -> None:
    """The answer stage has a part the judge's input has not taken yet, and the judge's
    template changed: the run is refused before that input is brought up to date, so no
    file of the folder changes (found by the stateful search in test_pipeline_stateful.py)."""
    out = tmp_path / "out"
    run_pipeline(
        str(questions(tmp_path / "q.jsonl", count=1)), str(out), stages=stages(tmp_path),
        gpu_sharing="swap", progress=False,
    )  # fmt: skip
    more = str(questions(tmp_path / "more.jsonl", count=4))
    run_pipeline(more, str(out), stages=stages(tmp_path)[:1], progress=False)  # a new part
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(PipelineError, match=r"stage 'judge'.*template"):
        run_pipeline(
            more, str(out), stages=stages(tmp_path, template="Rate: $text"), progress=False
        )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    missing = stages(tmp_path, template="Q: $nowhere")  # a column no input has
    with pytest.raises(PipelineError, match=r"stage 'judge'.*nowhere"):
        run_pipeline(more, str(out), stages=missing, progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
