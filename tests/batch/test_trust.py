"""An output folder you can trust, through the Python API on a real local Ray: settings that
cannot mix, stable ids, one run at a time, failed rows retried, secrets kept out."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rig_ray.batch import run
from rig_ray.batch.lock import LOCK_NAME
from rig_ray.batch.manifest import MANIFEST_NAME
from rig_ray.errors import BatchInputError
from tests.batch.members import FailsUntilFixed, Sleeper, SlowEcho, output_rows, rows
from tests.fakes import EchoGenerator

pytestmark = pytest.mark.usefixtures("local_ray")

FAST = {"num_cpus": 0.25, "progress": False}
SECRET = "sk-DO-NOT-LEAK-4242"


def _lines(path: Path, records: list[dict]) -> Path:
    with path.open("a") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    return path


def test_a_rerun_with_other_settings_is_refused_before_any_model_loads(tmp_path: Path) -> None:
    source = rows(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out"
    echo = EchoGenerator(model="e")
    run(str(source), str(out), generator=echo, template="About $topic", **FAST)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["template"] == "About $topic" and manifest["num_generations"] == 1
    assert manifest["generators"] == ["EchoGenerator(model='e')"]
    with pytest.raises(BatchInputError, match=r"^template differs from the run that made"):
        run(str(source), str(out), generator=echo, template="On $topic", **FAST)
    with pytest.raises(BatchInputError, match=r"^system message, seed differ"):
        run(
            str(source),
            str(out),
            generator=echo,
            template="About $topic",
            system="S",
            seed=3,
            **FAST,
        )
    with pytest.raises(BatchInputError, match=r"^id column differs"):
        run(
            str(source),
            str(out),
            generator=echo,
            template="About $topic",
            id_column="topic",
            **FAST,
        )
    assert len(output_rows(out)) == 3  # nothing was added by the refused runs
    more = run(
        str(source), str(out), generator=echo, template="About $topic", num_generations=2, **FAST
    )
    assert (more.generations_written, more.skipped) == (3, 3)  # raising the count is allowed
    assert json.loads((out / MANIFEST_NAME).read_text())["num_generations"] == 2
    with pytest.raises(BatchInputError, match="num_generations"):
        run(str(source), str(out), generator=echo, template="About $topic", **FAST)


def test_ids_come_from_the_prompt_and_stay_when_rows_or_columns_are_added(tmp_path: Path) -> None:
    source = _lines(tmp_path / "in.jsonl", [{"topic": "a"}, {"topic": "b"}, {"topic": "a"}])
    out = tmp_path / "out"
    echo = EchoGenerator(model="e")
    run(str(source), str(out), generator=echo, template="$topic", **FAST)
    first = {r["id"]: r["text"] for r in output_rows(out)}
    assert len(first) == 3  # the repeated prompt is made twice, under two ids
    repeated = [row_id for row_id in first if "#" in row_id]
    assert len(repeated) == 1 and repeated[0].endswith("#1")
    assert first[repeated[0]] == first[repeated[0].split("#")[0]] == "a"
    # a new row with a new key, and another repeat: earlier ids stay, only the new is made
    _lines(source, [{"topic": "c", "note": "a new column"}, {"topic": "a"}])
    again = run(str(source), str(out), generator=echo, template="$topic", **FAST)
    assert (again.skipped, again.generations_written) == (3, 2)
    second = {r["id"]: r["text"] for r in output_rows(out)}
    assert set(first) < set(second) and len(second) == 5
    assert sum(row_id.endswith("#2") for row_id in second) == 1


def test_duplicate_ids_are_refused_naming_the_first(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _lines(folder / "a.jsonl", [{"id": 1, "prompt": "x"}, {"id": 2, "prompt": "y"}])
    _lines(folder / "b.jsonl", [{"id": "3", "prompt": "z"}, {"id": "1", "prompt": "w"}])
    with pytest.raises(BatchInputError, match="the id '1' appears more than once") as caught:
        run(str(folder), str(tmp_path / "out"), generator=EchoGenerator(model="e"), **FAST)
    assert caught.value.column == "id"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("which", ["output", "input"])
def test_an_unknown_uri_scheme_is_refused_naming_it(
    tmp_path: Path, which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    source = str(rows(tmp_path / "in.jsonl", 1))
    args = ("s3a://bucket/in.jsonl", "out") if which == "input" else (source, "s3a://bucket/out")
    with pytest.raises(BatchInputError, match="URI scheme 's3a'"):
        run(*args, generator=EchoGenerator(model="e"), **FAST)
    assert list(tmp_path.iterdir()) == [tmp_path / "in.jsonl"]  # no local folder 's3a:'


def test_a_second_run_on_a_busy_folder_fails_fast(tmp_path: Path) -> None:
    source = rows(tmp_path / "in.jsonl", 12)
    out = tmp_path / "out"
    outcome: dict[str, object] = {}
    # Slow (0.5 s a batch) until the second run has been refused, then at once.
    slow = SlowEcho(model="s", seconds=0.5, fast_when=str(tmp_path / "fast"))

    def first() -> None:
        outcome["summary"] = run(
            str(source),
            str(out),
            generator=slow,
            template="$topic",
            num_generations=2,
            batch_size=2,
            **FAST,
        )

    job = threading.Thread(target=first)
    job.start()
    deadline = time.monotonic() + 60
    while not (out / LOCK_NAME).exists():
        assert time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(BatchInputError, match=r"is in use by another run \(pid \d+ on host"):
        run(
            str(source),
            str(out),
            generator=slow,
            template="$topic",
            num_generations=2,
            batch_size=2,
            **FAST,
        )
    assert time.monotonic() - started < 30
    (tmp_path / "fast").write_text("")
    job.join(240)
    assert not job.is_alive()
    keys = sorted((r["id"], r["generation_index"]) for r in output_rows(out))
    assert keys == sorted((f"r{n}", g) for n in range(12) for g in range(2))
    assert not (out / LOCK_NAME).exists()  # let go of at the end


def test_retry_failed_leaves_one_good_row_per_generation(tmp_path: Path) -> None:
    source = rows(tmp_path / "in.jsonl", 4)
    _lines(source, [{"id": "f1", "topic": "FAIL one"}, {"id": "f2", "topic": "FAIL two"}])
    out = tmp_path / "out"
    fixed = tmp_path / "fixed"
    flaky = FailsUntilFixed(model="flaky", fixed=str(fixed))
    options = {"generator": flaky, "template": "$topic", "num_generations": 2, **FAST}
    first = run(str(source), str(out), **options)
    assert (first.failed, first.failed_in_output) == (4, 4)
    assert "4 failed rows in the output" in first.line() and "--retry-failed" in first.line()
    again = run(str(source), str(out), **options)  # without the flag: failures stay
    assert (again.generations_written, again.failed_in_output) == (0, 4)
    fixed.write_text("")
    retried = run(str(source), str(out), retry_failed=True, **options)
    assert (retried.generations_written, retried.failed, retried.failed_in_output) == (4, 0, 0)
    got = output_rows(out)
    keys = sorted((r["id"], r["generation_index"]) for r in got)
    ids = [f"r{n}" for n in range(4)] + ["f1", "f2"]
    assert keys == sorted((i, g) for i in ids for g in range(2))  # exactly one row each
    assert all(r["error"] is None for r in got)
    assert {r["text"] for r in got if r["id"] == "f1"} == {"FAIL one"}


@pytest.mark.usefixtures("fake_providers")
def test_secrets_stay_out_of_the_parquet_and_the_manifest(tmp_path: Path) -> None:
    source = rows(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out"
    identifier = f"echo!e,api_key={SECRET},api_base=https://me:{SECRET}@example.com/v1"
    run(str(source), str(out), generator=identifier, template="$topic", **FAST)
    written = b"".join(path.read_bytes() for path in out.iterdir())
    assert SECRET.encode() not in written
    generators = {r["generator"] for r in output_rows(out)}
    assert generators == {"echo!e,api_base=https://me:***@example.com/v1"}
    assert pq.read_table(next(out.glob("part-*.parquet"))).num_rows == 2


def test_batches_overlap_in_one_actor_and_a_slow_batch_times_out(tmp_path: Path) -> None:
    source = rows(tmp_path / "in.jsonl", 8)
    out = tmp_path / "out"
    run(
        str(source),
        str(out),
        generator=Sleeper(model="s", seconds=1.0),
        template="$topic",
        batch_size=1,
        max_concurrent_batches=4,
        **FAST,
    )
    peaks = [json.loads(r["metadata"])["peak"] for r in output_rows(out)]
    assert max(peaks) > 1  # several engine calls ran at once in the one actor
    late = run(
        str(source),
        str(tmp_path / "late"),
        generator=Sleeper(model="s", seconds=30),
        template="$topic",
        batch_size=4,
        batch_timeout_s=0.5,
        **FAST,
    )
    assert late.failed == 8
    errors = {r["error"] for r in output_rows(tmp_path / "late")}
    assert errors == {"TimeoutError: the batch took longer than batch_timeout_s=0.5"}
