"""`rig-ray batch`: its help, one-line errors without tracebacks, and its exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rig_ray.cli import main
from tests.batch.members import output_rows, rows

REPO = Path(__file__).resolve().parents[2]
RIG_RAY = [sys.executable, "-m", "rig_ray.cli"]

OPTIONS = (
    "--generator", "--template", "--system", "--messages-column", "--num-generations",
    "--replicas", "--num-gpus", "--batch-size", "--id-column", "--seed", "--address",
    "--retry-failed", "--max-concurrent-batches", "--batch-timeout-s", "--num-cpus", "--data-cpus",
)  # fmt: skip


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RIG_RAY, "batch", *args], capture_output=True, text=True, cwd=REPO, timeout=180
    )


def test_help_lists_every_option() -> None:
    done = _cli("--help")
    assert done.returncode == 0
    for option in OPTIONS:
        assert option in done.stdout
    assert "INPUT" in done.stdout or "input" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.jsonl", "out", "--generator", "transformers!smollm2-135m"], "does not exist"),
        (["examples/prompts.jsonl", "out", "--generator", "nosuch!m"], "unknown provider"),
        (["examples/prompts.jsonl", "out", "--generator", "transformers!m,top_p=7"], "top_p"),
        pytest.param(  # the only case that reads the input, on a Ray of its own
            ["examples/prompts.jsonl", "out", "--generator", "transformers!m", "--template", "$x"],
            "template field 'x' is not a column",
            marks=pytest.mark.slow,
        ),
        pytest.param(  # a row Arrow cannot hold, found by the read task
            ["surrogate.jsonl", "out", "--generator", "transformers!m", "--template", "$topic"],
            "JSON row 2: column 'topic' holds a lone UTF-16 surrogate",
            marks=pytest.mark.slow,
        ),
    ],
    ids=["bad-path", "bad-provider", "bad-param", "missing-column", "lone-surrogate"],
)
def test_bad_input_gives_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str, request: pytest.FixtureRequest
) -> None:
    args = [str(tmp_path / "out") if a == "out" else a for a in args]
    if "surrogate.jsonl" in args:
        bad = tmp_path / "surrogate.jsonl"
        bad.write_text('{"topic": "sea"}\n{"topic": "x\\ud800y"}\n')
        args[args.index("surrogate.jsonl")] = str(bad)
    if "--template" in args:  # found once the rows are read: on the session's Ray, not a new one
        request.getfixturevalue("local_ray")
        import ray

        args += ["--address", str(ray.get_runtime_context().gcs_address)]
    done = _cli(*args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    ours = [line for line in done.stderr.splitlines() if line.startswith("rig-ray: error:")]
    assert len(ours) == 1 and message in ours[0], done.stderr
    assert "ERROR " not in done.stdout + done.stderr  # the error is told once, in our words
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray", "fake_providers")
def test_exit_code_says_whether_generations_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = rows(tmp_path / "in.jsonl", 3)
    ok = main(
        ["batch", str(source), str(tmp_path / "ok"), "--generator", "failing!f", "--template",
         "About $topic", "--num-cpus", "0.25", "--quiet"]
    )  # fmt: skip
    shown = capsys.readouterr().out
    assert ok == 0
    assert "3 rows in, 3 generations written (0 failed)" in shown
    assert "failing!f: About topic 0" in shown  # a few results are shown
    rows(source, 1, start=3, topic="FAIL")
    failed = main(
        ["batch", str(source), str(tmp_path / "ok"), "--generator", "failing!f", "--template",
         "About $topic", "--num-cpus", "0.25", "--quiet"]
    )  # fmt: skip
    shown = capsys.readouterr().out
    assert failed == 1
    assert "1 generations written (1 failed), 3 skipped" in shown
    assert "1 generations failed" in shown
    assert "1 failed rows in the output: run again with --retry-failed" in shown
    assert len(output_rows(tmp_path / "ok")) == 4
