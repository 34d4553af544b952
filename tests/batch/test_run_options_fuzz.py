"""A search over `batch.run`'s options, on a real local Ray with the echo generator: sizes,
counts and texts of every kind, sensible or not. Each call either writes exactly one row per
(row, generation) or is refused with a rig_ray error that names an option it was given, with
nothing written; never another exception, never a hang (each call's Ray work is bounded by
construction: three rows)."""

from __future__ import annotations

import math
import typing as t
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig_ray.batch import read_output, run
from rig_ray.errors import RigRayError
from tests.batch.members import rows
from tests.fakes import EchoGenerator

pytestmark = pytest.mark.usefixtures("local_ray")

EXAMPLES, SLOW_EXAMPLES = 15, 200
ROWS = 3

_odd_numbers = [-1, 0, 0.5, 1.5, math.nan, math.inf, "2", True, None]
OPTIONS: dict[str, st.SearchStrategy[t.Any]] = {
    "num_generations": st.sampled_from([1, 2, *_odd_numbers]),
    "rows_per_part": st.sampled_from([1, 2, 10_000, *_odd_numbers]),
    "seconds_per_part": st.sampled_from([0, 0.01, 30, *_odd_numbers]),
    "num_cpus": st.sampled_from([0.1, 0.25, *_odd_numbers]),
    "data_cpus": st.sampled_from([0.25, 1, *_odd_numbers]),
    "batch_size": st.sampled_from([1, 2, 64, *_odd_numbers]),
    "max_concurrent_batches": st.sampled_from([1, 2, *_odd_numbers]),
    "batch_timeout_s": st.sampled_from([30.0, *_odd_numbers]),
    "replicas": st.sampled_from([1, 2, *_odd_numbers]),
    "template": st.sampled_from(["$topic", "about $topic", "$nope", "$", "", "$$", None]),
    "system": st.sampled_from(["be brief", "", " ", None]),
    "id_column": st.sampled_from(["id", "topic", "nope", "", None]),
    "params": st.sampled_from(
        [{"max_tokens": 4}, {"max_tokens": 0}, {"stop": ""}, {"seed": 2**70}, {"x": 1}, None]
    ),
}
"""What each option may be; `None` leaves it out."""


def _words(error: BaseException) -> str:
    return " ".join(str(error).split())


def _one_run(folder: Path, chosen: dict[str, t.Any]) -> None:
    given_options = {name: value for name, value in chosen.items() if value is not None}
    source, out = rows(folder / "in.jsonl", ROWS), folder / "out"
    given_options.setdefault("template", "$topic")
    given_options.setdefault("num_cpus", 0.25)
    try:
        summary = run(
            str(source),
            str(out),
            generator=EchoGenerator(model="e"),
            progress=False,
            **given_options,
        )
    except RigRayError as refused:
        said = _words(refused)
        named = [
            name
            for name in given_options
            if name in said or f"--{name.replace('_', '-')}" in said or _field_named(name, said)
        ]
        assert named, f"{said!r} names none of {sorted(given_options)}"
        assert not out.exists() or not list(out.glob("part-*.parquet")), "written, then refused"
        return
    count = given_options.get("num_generations", 1)
    table = read_output(str(out))
    pairs = list(zip(table["id"].to_pylist(), table["generation_index"].to_pylist(), strict=True))
    assert len(pairs) == len(set(pairs)) == ROWS * count == summary.generations_written


def _search(tmp_path_factory: pytest.TempPathFactory, examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(chosen=st.fixed_dictionaries({}, optional=OPTIONS))
    def each(chosen: dict[str, t.Any]) -> None:
        _one_run(tmp_path_factory.mktemp("options"), chosen)

    each()


def test_each_run_writes_one_row_per_generation_or_refuses_naming_an_option(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    _search(tmp_path_factory, EXAMPLES)


@pytest.mark.slow
def test_the_same_search_further(tmp_path_factory: pytest.TempPathFactory) -> None:
    _search(tmp_path_factory, SLOW_EXAMPLES)


def _field_named(option: str, said: str) -> bool:
    """Whether `said` names a setting inside `option`: a params field, a template's column."""
    if option == "params":
        return any(field in said for field in ("max_tokens", "stop", "seed", "'x'", "x:"))
    if option in ("template", "system", "id_column"):
        return "column" in said or "template" in said or "must not be empty" in said
    return False
