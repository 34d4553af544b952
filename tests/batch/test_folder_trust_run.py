"""Batch runs into one output folder across reruns that change the input or the settings: the
split after a raise, ids that no insertion moves, ids read as written, the manifest written
only once something is made, and the command line's exit codes."""

from __future__ import annotations

import collections
import json
import typing as t
from pathlib import Path

import pytest

from rig_ray.batch import run
from rig_ray.batch.manifest import MANIFEST_NAME
from rig_ray.batch.plan import member_indices
from rig_ray.errors import BatchInputError, GenerationError, ModelNotAvailableError
from rig_ray.generator.params import GenerateParams
from tests.batch.members import output_rows, rows
from tests.fakes import CallbackGenerator, EchoGenerator

pytestmark = pytest.mark.usefixtures("local_ray")

FAST = {"num_cpus": 0.25, "progress": False}


@pytest.mark.slow
def test_raising_num_generations_keeps_the_split_of_a_fresh_run(tmp_path: Path) -> None:
    source, out = rows(tmp_path / "in.jsonl", 6), tmp_path / "out"
    members = [EchoGenerator(model="m0"), EchoGenerator(model="m1")]
    options = {"generators": members, "template": "$topic", "seed": 4, **FAST}
    run(str(source), str(out), num_generations=2, **options)
    before = {(r["id"], r["generation_index"]): r["model"] for r in output_rows(out)}
    run(str(source), str(out), num_generations=4, **options)
    after = {(r["id"], r["generation_index"]): r["model"] for r in output_rows(out)}
    assert len(after) == 6 * 4
    assert {key: after[key] for key in before} == before  # written rows keep their generator
    for n in range(6):
        made = collections.Counter(after[(f"r{n}", g)] for g in range(4))
        assert made == {"m0": 2, "m1": 2}  # what the pool's rule gives for 4 over 2
        owned = member_indices(f"r{n}", 4, 2, 4)
        assert all(after[(f"r{n}", g)] == f"m{k}" for k in (0, 1) for g in owned[k])


def _sweep(path: Path, temperatures: list[float]) -> Path:
    lines = [{"prompt": "one prompt", "params": {"temperature": x}} for x in temperatures]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _with_temperature(item: t.Any, params: GenerateParams) -> str:
    return f"{item[-1].content} at {params.temperature}"


def test_ids_cover_a_rows_own_params_and_no_insertion_moves_them(tmp_path: Path) -> None:
    out = tmp_path / "out"
    generator = CallbackGenerator(model="sweep", callback=_with_temperature)
    options = {"generator": generator, "params_column": "params", **FAST}
    first = run(str(_sweep(tmp_path / "a.jsonl", [0.1, 0.2, 0.3])), str(out), **options)
    assert first.generations_written == 3
    ids = {r["text"]: r["id"] for r in output_rows(out)}
    assert len(set(ids.values())) == 3
    # a row inserted at the front, one appended, one identical twin of a row
    again = run(
        str(_sweep(tmp_path / "b.jsonl", [0.9, 0.1, 0.2, 0.3, 0.5, 0.2])), str(out), **options
    )
    assert (again.skipped, again.generations_written) == (3, 3)
    texts = collections.Counter(r["text"] for r in output_rows(out))
    assert texts == {f"one prompt at {x}": 1 for x in (0.9, 0.1, 0.3, 0.5)} | {
        "one prompt at 0.2": 2
    }
    kept = {r["text"]: r["id"] for r in output_rows(out) if r["text"] in ids}
    assert kept == ids | {"one prompt at 0.2": kept["one prompt at 0.2"]}
    twins = sorted(r["id"] for r in output_rows(out) if r["text"] == "one prompt at 0.2")
    assert twins == [ids["one prompt at 0.2"], ids["one prompt at 0.2"] + "#1"]


def test_csv_ids_are_read_as_written(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,prompt\n007,a\n7,b\n12345678901234567890123,c\n0.10,d\n,e\n")
    run(str(source), str(tmp_path / "out"), generator=EchoGenerator(model="e"), **FAST)
    got = {r["text"]: r["id"] for r in output_rows(tmp_path / "out")}
    assert [got[x] for x in "abcd"] == ["007", "7", "12345678901234567890123", "0.10"]
    assert len(got["e"]) == 16  # an empty cell is no id: the row gets its content's


def test_jsonl_ids_are_read_as_written(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"id": 1, "prompt": "a", "n": 3}\n{"id": 1.0, "prompt": "b", "n": 4.5}\n'
        '{"id": 2.5, "prompt": "c"}\n{"id": 12345678901234567890123, "prompt": "d"}\n'
        '{"id": "007", "prompt": "e"}\n'
    )
    run(str(source), str(tmp_path / "out"), generator=EchoGenerator(model="e"), **FAST)
    got = {r["text"]: (r["id"], r["n"]) for r in output_rows(tmp_path / "out")}
    assert {text: value[0] for text, value in got.items()} == {
        "a": "1",
        "b": "1.0",
        "c": "2.5",
        "d": "12345678901234567890123",
        "e": "007",
    }
    assert (got["a"][1], got["b"][1]) == (3, 4.5)  # other numbers stay numbers


class FailsToLoad(EchoGenerator):
    def load(self) -> t.Any:
        raise ModelNotAvailableError(f"no model at {self.model!r}", model=self.model)


def test_a_run_that_makes_nothing_leaves_no_manifest(tmp_path: Path) -> None:
    source, out = rows(tmp_path / "in.jsonl", 3), tmp_path / "out"
    with pytest.raises(GenerationError):
        run(str(source), str(out), generator=FailsToLoad(model="/typo"), template="$topic", **FAST)
    assert not (out / MANIFEST_NAME).exists()
    fixed = run(
        str(source), str(out), generator=EchoGenerator(model="/m"), template="$topic", **FAST
    )
    assert fixed.generations_written == 3
    assert (out / MANIFEST_NAME).exists()


@pytest.mark.parametrize("count", [0, -2])
def test_no_generations_is_refused_before_anything_is_written(tmp_path: Path, count: int) -> None:
    source, out = rows(tmp_path / "in.jsonl", 3), tmp_path / "out"
    with pytest.raises(BatchInputError, match="num_generations must be"):
        run(str(source), str(out), generator=EchoGenerator(model="e"), num_generations=count)
    assert not out.exists()


@pytest.mark.usefixtures("fake_providers")
def test_the_cli_exits_2_for_no_generations_and_1_for_a_generation_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rig_ray.cli import main
    from rig_ray.generator.registry import register_generator

    register_generator("failstoload", FailsToLoad)
    source, out = rows(tmp_path / "in.jsonl", 3), tmp_path / "out"
    common = [str(source), str(out), "--template", "$topic", "--quiet", "--num-cpus", "0.25"]
    code = main(["batch", *common, "--generator", "echo!e", "--num-generations", "0"])
    assert code == 2 and "num_generations must be" in capsys.readouterr().err
    assert not out.exists()
    code = main(["batch", *common, "--generator", "failstoload!/typo"])
    assert code == 1 and "the batch job stopped" in capsys.readouterr().err


def test_a_jsonl_column_missing_from_the_first_row_is_still_read(tmp_path: Path) -> None:
    # found by the stateful test: ids given only on later rows were dropped
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a"}\n{"prompt": "b", "id": "named"}\n')
    run(str(source), str(tmp_path / "out"), generator=EchoGenerator(model="e"), **FAST)
    got = {r["text"]: r["id"] for r in output_rows(tmp_path / "out")}
    assert got["b"] == "named" and len(got["a"]) == 16
