"""`rig_ray.batch.run` and `generate` end to end on a local Ray, with fast fake generators."""

from __future__ import annotations

import collections
import csv
import json
import typing as t
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rig_ray import GenerateParams
from rig_ray.batch import OUTPUT_COLUMNS, generate, run
from rig_ray.batch.plan import member_indices
from rig_ray.batch.run import pending
from rig_ray.errors import (
    BatchInputError,
    InvalidGeneratorError,
    RigRayError,
    UnknownProviderError,
)
from tests.batch.members import CountsLoads, StopsAt, Whole, output_rows, rows
from tests.fakes import CallbackGenerator, EchoGenerator, FailingGenerator, FixedGenerator

pytestmark = pytest.mark.usefixtures("local_ray")

FAST = {"num_cpus": 0.25, "progress": False}


def test_one_row_per_generation_with_the_documented_columns(tmp_path: Path) -> None:
    source = rows(tmp_path / "in.jsonl", 5, text="input text")
    summary = run(
        str(source),
        str(tmp_path / "out"),
        generator=EchoGenerator(model="echo-model"),
        template="Tell me about $topic.",
        num_generations=3,
        batch_size=2,
        **FAST,
    )
    assert (summary.rows_in, summary.generations_written, summary.failed) == (5, 15, 0)
    assert summary.output_tokens == 15 * 5 and summary.skipped == 0
    table = pa.concat_tables([pq.read_table(part) for part in summary.parts])
    # generation columns first, in the documented order, then the input's own columns
    assert table.column_names == [*OUTPUT_COLUMNS, "topic", "input_text"]
    got = sorted(table.to_pylist(), key=lambda r: (r["id"], r["generation_index"]))
    assert [(r["id"], r["generation_index"]) for r in got] == [
        (f"r{n}", g) for n in range(5) for g in range(3)
    ]
    first = got[0]
    assert first["text"] == "Tell me about topic 0."
    assert first["generator"] and "echo-model" in first["generator"]
    assert {r["generator"] for r in got} == {first["generator"]}
    assert first["model"] == "echo-model"
    assert first["stop_reason"] == "stop" and first["error"] is None
    assert first["input_tokens"] == 5 and first["output_tokens"] == 5
    assert first["latency_s"] >= 0 and first["input_text"] == "input text"


_SLOW_KINDS = [pytest.param(kind, marks=pytest.mark.slow) for kind in ("glob", "folder")]
"""Globs and folders are listed by tests/batch/test_source.py; a job reads them in `slow`."""


@pytest.mark.parametrize("kind", ["csv", "parquet", *_SLOW_KINDS])
def test_reads_csv_parquet_globs_and_folders(tmp_path: Path, kind: str) -> None:
    records = [{"id": f"c{n}", "prompt": f"question {n}"} for n in range(4)]
    folder = tmp_path / "in"
    folder.mkdir()
    if kind == "csv":
        source = folder / "prompts.csv"
        with source.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=["id", "prompt"])
            writer.writeheader()
            writer.writerows(records)
    else:
        for half in (0, 1):
            pq.write_table(
                pa.Table.from_pylist(records[half * 2 : half * 2 + 2]), folder / f"{half}.parquet"
            )
        source = folder / "0.parquet" if kind == "parquet" else folder
        if kind == "glob":
            source = folder / "*.parquet"
    out = tmp_path / "out"
    summary = run(str(source), str(out), generator=EchoGenerator(model="e"), **FAST)
    expected = 2 if kind == "parquet" else 4
    assert summary.generations_written == expected
    texts = {r["id"]: r["text"] for r in output_rows(out)}  # `prompt` is the default template
    assert texts == {f"c{n}": f"question {n}" for n in range(expected)}


def test_a_csv_cell_that_is_not_utf8_fails_its_row_only(tmp_path: Path) -> None:
    # pyarrow reads the whole column as binary: the other cells are still the text they hold.
    source = tmp_path / "in.csv"
    source.write_bytes(b"id,prompt\na,hel\xfflo\nb,caf\xc3\xa9\n")
    out = tmp_path / "out"
    summary = run(str(source), str(out), generator=EchoGenerator(model="e"), **FAST)
    got = {r["id"]: r for r in output_rows(out)}
    assert summary.failed == 1 and got["b"]["text"] == "caf\u00e9"
    assert got["a"]["text"] is None
    assert "column 'prompt' is not UTF-8 text" in got["a"]["error"]


def test_an_output_folder_inside_its_input_folder_is_not_read_as_input(tmp_path: Path) -> None:
    source, out = tmp_path / "data", tmp_path / "data" / "out"
    source.mkdir()
    rows(source / "in.jsonl", 3)
    first = run(
        str(source), str(out), generator=EchoGenerator(model="e"), template="$topic", **FAST
    )
    again = run(
        str(source), str(out), generator=EchoGenerator(model="e"), template="$topic", **FAST
    )
    assert (first.rows_in, first.generations_written) == (3, 3)
    assert (again.rows_in, again.generations_written, again.skipped) == (3, 0, 3)
    with pytest.raises(BatchInputError, match="is the input folder"):
        run(str(source), f"{source}/", generator=EchoGenerator(model="e"), **FAST)


def test_rows_without_an_id_get_the_same_content_id_every_run(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"p{n}"}) + "\n" for n in range(3)))
    first = run(str(source), str(tmp_path / "a"), generator=EchoGenerator(model="e"), **FAST)
    again = run(str(source), str(tmp_path / "b"), generator=EchoGenerator(model="e"), **FAST)
    ids_a = {r["id"]: r["text"] for r in output_rows(tmp_path / "a")}
    ids_b = {r["id"]: r["text"] for r in output_rows(tmp_path / "b")}
    assert ids_a == ids_b and len(ids_a) == 3 == first.generations_written == again.rows_in


def test_several_generators_split_each_rows_generations_by_the_rule(tmp_path: Path) -> None:
    source = rows(tmp_path / "in.jsonl", 12)
    members = [FixedGenerator(model=f"m{k}", text=f"from m{k}") for k in range(3)]
    summary = run(
        str(source),
        str(tmp_path / "out"),
        generators=members,
        template="$topic",
        num_generations=4,
        seed=7,
        **FAST,
    )
    assert summary.generations_written == 48
    made_by = {(r["id"], r["generation_index"]): r["model"] for r in output_rows(tmp_path / "out")}
    assert len(made_by) == 48
    extra_for: collections.Counter[int] = collections.Counter()
    for n in range(12):
        ranges = member_indices(f"r{n}", 4, 3, 7)
        assert sorted(len(indices) for indices in ranges) == [1, 1, 2]
        for k, indices in enumerate(ranges):
            assert all(made_by[(f"r{n}", g)] == f"m{k}" for g in indices)
            if len(indices) == 2:
                extra_for[k] += 1
    assert sum(extra_for.values()) == 12  # 4 % 3: one member per row makes one more
    assert len(extra_for) > 1  # the member with the extra one is drawn per row, not fixed


def test_a_failing_row_gets_an_error_and_the_run_goes_on(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    lines = [{"id": "ok", "topic": "fine"}, {"id": "bad", "topic": "FAIL me"}, {"id": "null"}]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = run(
        str(source),
        str(tmp_path / "out"),
        generator=FailingGenerator(model="f"),
        template="About $topic",
        **FAST,
    )
    assert (summary.generations_written, summary.failed) == (3, 2)
    got = {r["id"]: r for r in output_rows(tmp_path / "out")}
    assert got["ok"]["text"] == "About fine" and got["ok"]["error"] is None
    assert got["bad"]["text"] is None and "GenerationError" in got["bad"]["error"]
    assert "'topic' is null" in got["null"]["error"]


def test_a_batch_that_fails_as_a_whole_fails_its_rows_only(tmp_path: Path) -> None:
    source = rows(tmp_path / "in.jsonl", 3)
    summary = run(
        str(source), str(tmp_path / "out"), generator=Whole(model="w"), template="$topic", **FAST
    )
    assert summary.failed == 3
    assert {r["error"] for r in output_rows(tmp_path / "out")} == {
        "RuntimeError: the engine is out of memory"
    }


def _transcript(conversation: t.Any, params: GenerateParams) -> str:
    return " | ".join(f"{m.role}: {m.content}" for m in conversation)


def test_messages_column_with_a_system_message(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    chats = [
        {"id": "a", "messages": [{"role": "user", "content": "first"}]},
        {
            "id": "b",
            "messages": [
                {"role": "system", "content": "own"},
                {"role": "user", "content": "second"},
            ],
        },
        {"id": "c", "messages": []},
    ]
    source.write_text("".join(json.dumps(chat) + "\n" for chat in chats))
    out = tmp_path / "out"
    run(
        str(source),
        str(out),
        generator=CallbackGenerator(model="t", callback=_transcript),
        system="Be brief.",
        **FAST,
    )
    got = {r["id"]: r["text"] or r["error"] for r in output_rows(out)}
    assert got["a"] == "system: Be brief. | user: first"
    assert got["b"] == "system: own | user: second"  # its own system message is kept
    assert "'messages' is empty in this row" in got["c"]


def test_resume_makes_only_what_is_missing(tmp_path: Path) -> None:
    source = rows(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out"
    loads = tmp_path / "loads"
    echo = CountsLoads(model="e", log=str(loads))
    first = run(str(source), str(out), generator=echo, template="$topic", **FAST)
    assert first.generations_written == 4
    rows(source, 2, start=4)  # new input rows, and now two generations each
    second = run(
        str(source), str(out), generator=echo, template="$topic", num_generations=2, **FAST
    )
    assert (second.skipped, second.generations_written) == (4, 8)
    keys = [(r["id"], r["generation_index"]) for r in output_rows(out)]
    assert sorted(keys) == [(f"r{n}", g) for n in range(6) for g in range(2)]
    # all done: nothing is generated, and no actor even loads the model
    loaded = loads.read_text()
    third = run(str(source), str(out), generator=echo, template="$topic", num_generations=2, **FAST)
    assert (third.generations_written, third.skipped, third.parts) == (0, 12, [])
    assert loads.read_text() == loaded


def test_generate_is_a_lazy_dataset_that_composes(tmp_path: Path) -> None:
    ray = _ray()
    items = [{"id": n, "prompt": f"p{n}"} for n in range(6)]
    generations = generate(
        ray.data.from_items(items), generator=EchoGenerator(model="e"), num_generations=2
    )
    kept = generations.filter(lambda row: row["generation_index"] == 1).select_columns(
        ["id", "text"]
    )
    assert sorted(kept.take_all(), key=lambda r: int(r["id"])) == [
        {"id": str(n), "text": f"p{n}"} for n in range(6)
    ]


def test_a_generations_column_gives_each_row_its_own_count(tmp_path: Path) -> None:
    ray = _ray()
    items = [{"id": "one", "k": 1}, {"id": "two", "k": 2}, {"id": "all", "k": None}]
    members = [FixedGenerator(model=f"m{m}", text=f"m{m}") for m in range(2)]
    made = generate(
        ray.data.from_items(items),
        generators=members,
        template="x",
        num_generations=3,
        generations_column="k",
        seed=1,
    ).take_all()  # num_cpus unset: two actors fit a 2-CPU Ray beside Ray Data's tasks
    keys = sorted((row["id"], row["generation_index"]) for row in made)
    assert keys == [("all", 0), ("all", 1), ("all", 2), ("one", 0), ("two", 0), ("two", 1)]
    two = {row["model"] for row in made if row["id"] == "two"}
    assert len(two) == 2  # a row's own count is split across the pool by the rule
    with pytest.raises(InvalidGeneratorError, match="generations_column 'nope'"):
        generate(
            ray.data.from_items(items),
            generator=members[0],
            template="x",
            generations_column="nope",
        )


def test_bad_input_is_refused_before_any_generation(tmp_path: Path) -> None:
    source = rows(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out"
    with pytest.raises(BatchInputError, match="'question' is not a column") as caught:
        run(str(source), str(out), generator=EchoGenerator(model="e"), template="$question", **FAST)
    assert caught.value.column == "question"
    with pytest.raises(BatchInputError, match="does not exist"):
        run(str(tmp_path / "nope.jsonl"), str(out), generator=EchoGenerator(model="e"), **FAST)
    garbled = tmp_path / "garbled.jsonl"
    garbled.write_text('{"prompt": "fine"}\n{"prompt": oops\n')
    with pytest.raises(BatchInputError, match=r"cannot read .*: BatchInputError: line 2 is not"):
        run(str(garbled), str(out), generator=EchoGenerator(model="e"), **FAST)
    garbled.write_text('{"prompt": "fine"}\n{"prompt": "x\\ud800y"}\n')  # valid JSON
    with pytest.raises(BatchInputError, match="row 2: column 'prompt' holds a lone UTF-16"):
        run(str(garbled), str(out), generator=EchoGenerator(model="e"), **FAST)
    with pytest.raises(UnknownProviderError):
        run(str(source), str(out), generator="nosuch!model", **FAST)
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("num_cpus", -1),
        ("num_cpus", float("nan")),
        ("data_cpus", -0.5),
        ("data_cpus", "1"),
        ("rows_per_part", 0),
        ("rows_per_part", 2.5),
        ("seconds_per_part", -1),
        ("seconds_per_part", float("nan")),
        ("replicas", float("nan")),  # found by the options search: int(nan) in the job
        ("batch_size", 1.5),
    ],
)
def test_sizes_that_mean_nothing_are_refused_naming_them(
    tmp_path: Path, option: str, value: t.Any
) -> None:
    # A negative num_cpus was Ray's bare `SystemException`, once a model had begun to load.
    out = tmp_path / "out"
    options = {**FAST, option: value}
    with pytest.raises(RigRayError, match=f"^{option} must be a "):
        run(
            str(rows(tmp_path / "in.jsonl", 2)),
            str(out),
            generator=EchoGenerator(model="e"),
            **options,
        )
    assert not out.exists()
    if option.endswith("cpus"):
        with pytest.raises(RigRayError, match=f"^{option} must be a "):
            generate(
                _ray().data.from_items([{"prompt": "p"}]),
                generator=EchoGenerator(model="e"),
                **{option: value},
            )


def test_params_may_be_a_dict_of_their_fields(tmp_path: Path) -> None:
    source, out = rows(tmp_path / "in.jsonl", 2), tmp_path / "out"
    generator = CallbackGenerator(model="cb", callback=lambda item, params: f"{params.max_tokens}")
    job = {"generator": generator, "template": "$topic"}
    assert pending(str(source), str(out), params={"max_tokens": 5}, **job) == 2
    run(str(source), str(out), params={"max_tokens": 5}, **job, **FAST)
    assert {r["text"] for r in output_rows(out)} == {"5"}
    with pytest.raises(BatchInputError, match="params: max_tokens"):
        run(str(source), str(out), params={"max_tokens": 0}, **job, **FAST)


def _ray() -> t.Any:
    import ray

    return ray


def test_each_row_can_carry_its_own_params(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    lines = [
        {"id": "short", "topic": "a", "params": {"max_tokens": 4}},
        {"id": "long", "topic": "b", "params": {"max_tokens": 200}},
        {"id": "default", "topic": "c", "params": None},
        {"id": "bad", "topic": "d", "params": {"max_tokens": -1}},
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    generator = CallbackGenerator(
        model="cb", callback=lambda item, params: f"{params.max_tokens} {params.temperature}"
    )
    summary = run(
        str(source),
        str(tmp_path / "out"),
        generator=generator,
        template="$topic",
        params=GenerateParams(max_tokens=16, temperature=0.5),
        params_column="params",
        **FAST,
    )
    assert (summary.generations_written, summary.failed) == (4, 1)
    got = {r["id"]: r for r in output_rows(tmp_path / "out")}
    assert [got[k]["text"] for k in ("short", "long", "default")] == [
        "4 0.5",
        "200 0.5",
        "16 0.5",
    ]
    assert "column 'params' does not hold valid params" in got["bad"]["error"]


def test_a_stopped_batch_ends_the_job_and_fails_no_row(tmp_path: Path) -> None:
    """`BatchStoppedError` (a `/v1/batches` batch cancelled while its rows wait) ends the job
    at once: what was made is written, and the rows it did not make are not failed rows."""
    source = rows(tmp_path / "in.jsonl", 4)
    rows(source, 1, start=4, topic="STOP")
    rows(source, 3, start=5)
    out = tmp_path / "out"
    with pytest.raises(RigRayError, match="batch batch_test was stopped"):
        run(
            str(source),
            str(out),
            generator=StopsAt(model="stops"),
            template="$topic",
            batch_size=1,
            max_concurrent_batches=1,
            rows_per_part=1,
            **FAST,
        )
    written = output_rows(out) if any(out.glob("part-*.parquet")) else []
    assert all(row["error"] is None for row in written)
    assert {row["id"] for row in written} <= {f"r{n}" for n in range(4)}


def test_a_set_stop_event_ends_the_run_after_the_batch_it_writes(tmp_path: Path) -> None:
    """`stop=` set before the run starts: it writes its first batch (one row) and returns;
    the next run makes the rest."""
    import threading

    source, out = rows(tmp_path / "in.jsonl", 20), str(tmp_path / "out")
    stop = threading.Event()
    stop.set()
    options = {"generator": EchoGenerator(model="e"), "template": "$topic", "batch_size": 1, **FAST}
    stopped = run(str(source), out, stop=stop, max_concurrent_batches=1, **options)
    assert stopped.generations_written == 1
    rest = run(str(source), out, **options)
    assert (rest.skipped, rest.generations_written) == (1, 19)
