"""An OpenAI batch file over several generators: `body.model` chooses by served name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

from rig_ray.batch import read_output, run
from rig_ray.batch.manifest import MANIFEST_NAME
from rig_ray.batch.openai_files import prepare, read_invalid
from rig_ray.errors import BatchInputError
from tests.batch.test_openai_files import FAST, REPO, chat_line, read_jsonl, write_lines
from tests.fakes import EchoGenerator, FailingGenerator


def routed_lines() -> list[dict[str, t.Any]]:
    return [
        {**chat_line("a1", "one"), "body": {**chat_line("a1", "one")["body"], "model": "alpha"}},
        {**chat_line("b1", "two"), "body": {**chat_line("b1", "two")["body"], "model": "beta"}},
        {**chat_line("g1", "x"), "body": {**chat_line("g1", "x")["body"], "model": "gamma"}},
        {
            **chat_line("b2", "three"),
            "body": {**chat_line("b2", "three", n=3)["body"], "model": "beta"},
        },
        {**chat_line("a2", "four"), "body": {**chat_line("a2", "four")["body"], "model": "alpha"}},
    ]


def models_of(out: Path) -> dict[str, set[str]]:
    """The models that made each id's generations."""
    made: dict[str, set[str]] = {}
    for row in read_output(str(out), columns=["id", "model"]).to_pylist():
        made.setdefault(row["id"], set()).add(row["model"])
    return made


def test_an_unknown_model_is_a_model_not_found_line(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.jsonl", routed_lines())
    served = {"alpha": False, "beta": False}
    prepared = prepare(str(source), str(tmp_path / "out"), vllm_fields=served)
    assert (prepared.valid, prepared.invalid) == (4, 1)
    [unknown] = read_invalid(str(tmp_path / "out"))
    assert (unknown.line, unknown.custom_id, unknown.code) == (3, "g1", "model_not_found")
    assert unknown.param == "model"
    assert "'gamma' does not exist (served: alpha, beta)" in unknown.message


def test_vllm_fields_are_refused_for_the_line_whose_generator_is_not_vllm(
    tmp_path: Path,
) -> None:
    lines = [
        {**chat_line("v", "x", ignore_eos=True), "url": "/v1/chat/completions"},
        {**chat_line("t", "x", ignore_eos=True)},
    ]
    lines[0]["body"]["model"], lines[1]["body"]["model"] = "on-vllm", "other"
    source = write_lines(tmp_path / "in.jsonl", lines)
    served = {"on-vllm": True, "other": False}
    prepared = prepare(str(source), str(tmp_path / "out"), vllm_fields=served)
    assert (prepared.valid, prepared.invalid) == (1, 1)
    [refused] = read_invalid(str(tmp_path / "out"))
    assert (refused.custom_id, refused.param) == ("t", "ignore_eos")


@pytest.mark.usefixtures("local_ray")
def test_body_model_chooses_the_generator(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.jsonl", routed_lines())
    out = tmp_path / "out"
    members = [EchoGenerator(model="/models/alpha"), FailingGenerator(model="/models/beta")]
    run(str(source), str(out), generators=members, output_format="openai", **FAST)
    # served by default as the last part of their model paths, as `rig-ray serve` names them
    assert models_of(out) == {
        "a1": {"/models/alpha"},
        "a2": {"/models/alpha"},
        "b1": {"/models/beta"},
        "b2": {"/models/beta"},
    }
    outputs = read_jsonl(out / "output.jsonl")
    assert [line["custom_id"] for line in outputs] == ["a1", "b1", "b2", "a2"]
    assert [line["response"]["body"]["model"] for line in outputs] == [
        "alpha",
        "beta",
        "beta",
        "alpha",
    ]
    assert len(outputs[2]["response"]["body"]["choices"]) == 3
    [error] = read_jsonl(out / "errors.jsonl")
    assert error["custom_id"] == "g1" and error["error"]["code"] == "model_not_found"
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["names"] == ["alpha", "beta"]
    # the names are pinned: other names on the same folder are refused before any model loads
    with pytest.raises(BatchInputError, match="served names"):
        run(str(source), str(out), generators=members, names=["beta", "alpha"], **FAST)


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_with_one_generator_any_model_name_is_accepted(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.jsonl", routed_lines())
    out = tmp_path / "out"
    run(str(source), str(out), generator=EchoGenerator(model="e"), output_format="openai", **FAST)
    outputs = read_jsonl(out / "output.jsonl")
    assert [line["response"]["body"]["model"] for line in outputs] == [
        "alpha",
        "beta",
        "gamma",
        "beta",
        "alpha",
    ]
    assert json.loads((out / MANIFEST_NAME).read_text())["names"] is None


@pytest.mark.parametrize(
    ("names", "match"),
    [
        (["same", "same"], "two generators would be served as 'same'"),
        (["only-one"], "got 1 names for 2 generators"),
    ],
)
def test_names_are_checked(tmp_path: Path, names: list[str], match: str) -> None:
    source = write_lines(tmp_path / "in.jsonl", routed_lines())
    members = [EchoGenerator(model="a"), EchoGenerator(model="b")]
    with pytest.raises(BatchInputError, match=match):
        run(str(source), str(tmp_path / "out"), generators=members, names=names, **FAST)


def test_names_need_an_openai_batch_file(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.jsonl", [{"prompt": "x"}])
    with pytest.raises(BatchInputError, match="OpenAI batch file only"):
        run(
            str(source),
            str(tmp_path / "out"),
            generator=EchoGenerator(model="e"),
            names=["e"],
            **FAST,
        )


@pytest.mark.slow
def test_cli_names_route_the_lines(tmp_path: Path, local_ray: t.Any) -> None:
    source = write_lines(tmp_path / "in.jsonl", routed_lines())
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "tests.batch.fake_cli", "batch", str(source), str(out),
        "--generator", "echo!first", "--name", "beta",
        "--generator", "failing!second", "--name", "alpha",
        "--output-format", "openai", "--num-cpus", "0.25", "--quiet",
        "--address", local_ray.get_runtime_context().gcs_address,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert models_of(out) == {
        "a1": {"second"},
        "a2": {"second"},
        "b1": {"first"},
        "b2": {"first"},
    }
    assert [line["custom_id"] for line in read_jsonl(out / "errors.jsonl")] == ["g1"]


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_two_bundled_generators_each_run_their_lines(tmp_path: Path) -> None:
    """Two transformers engines on the bundled model, told apart by their max_tokens: each
    line's completion has the length of the generator its body.model names."""
    short, long = "transformers!smollm2-135m,max_tokens=2", "transformers!smollm2-135m,max_tokens=6"
    lines = [chat_line(f"q{i}", f"Count to ten, {i}.", temperature=0) for i in range(4)]
    for index, line in enumerate(lines):
        line["body"]["model"] = "short" if index % 2 else "long"
    source = write_lines(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out"
    run(
        str(source),
        str(out),
        generators=[short, long],
        names=["short", "long"],
        output_format="openai",
        **FAST,
    )
    table = read_output(str(out), columns=["id", "generator", "output_tokens"]).to_pylist()
    ran = {row["id"]: (row["generator"], row["output_tokens"]) for row in table}
    for index in range(4):
        identifier, tokens = ran[f"q{index}"]
        assert identifier.endswith("max_tokens=2" if index % 2 else "max_tokens=6")
        assert tokens == (2 if index % 2 else 6)
    outputs = read_jsonl(out / "output.jsonl")
    assert [line["response"]["body"]["usage"]["completion_tokens"] for line in outputs] == [
        6,
        2,
        6,
        2,
    ]
