"""`rig-ray batch --parse-as module:Class` (a module in the working directory, shipped to the
actors by value) and the structured options' errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rig_ray.cli import main
from tests.batch.members import output_rows

REPO = Path(__file__).resolve().parents[2]

MOODS = """
import typing as t
from rig_ray import Model

class Mood(Model):
    value: t.Literal["happy", "sad"]
"""


@pytest.mark.usefixtures("local_ray", "fake_providers")
def test_parse_as_a_class_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "moods_for_cli_test.py").write_text(MOODS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "moods_for_cli_test", raising=False)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": m, "mood": m}) + "\n" for m in ["happy", "meh"]))
    code = main(
        ["batch", str(source), str(tmp_path / "out"), "--generator", "echo!e", "--template",
         "<mood>$mood</mood>", "--parse-as", "moods_for_cli_test:Mood", "--max-parse-retries",
         "1", "--num-cpus", "0.25", "--quiet"]
    )  # fmt: skip
    assert code == 1  # one row never parsed
    assert "1 failed" in capsys.readouterr().out
    got = {r["id"]: r for r in output_rows(tmp_path / "out")}
    assert (got["happy"]["value"], got["happy"]["parse_retries"]) == ("happy", 0)
    assert (got["meh"]["value"], got["meh"]["parse_retries"]) == (None, 1)
    assert got["meh"]["error"].startswith("ParseRetriesExhaustedError: Mood did not parse")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--parse-as", "no_such_module_here:Thing"], "cannot import it"),
        (["--parse-as", "json"], "takes module:Class"),
        (["--parse-as", "json:JSONDecoder"], "not a rig_ray.Model subclass"),
        (["--json-schema", "missing.json"], "cannot read it"),
    ],
    ids=["no-module", "no-class", "not-a-model", "no-schema-file"],
)
def test_bad_structured_options_give_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rig_ray.cli", "batch", "examples/prompts.jsonl",
         str(tmp_path / "out"), "--generator", "transformers!smollm2-135m", *args],
        capture_output=True, text=True, cwd=REPO, timeout=180,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    ours = [line for line in done.stderr.splitlines() if line.startswith("rig-ray: error:")]
    assert len(ours) == 1 and message in ours[0], done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
