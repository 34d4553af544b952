"""A batch job's console holds rig_ray's own lines only, unless `verbose`: real engines, in a
subprocess, as a user runs them (from Python, and through the CLI)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.batch.members import rows

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
OURS = ("rig-ray", "rig_ray")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "", "PYTHONWARNINGS": ""}


def _python_batch(tmp_path: Path, *, verbose: bool) -> subprocess.CompletedProcess[str]:
    source = rows(tmp_path / "in.jsonl", 2)
    code = textwrap.dedent(
        f"""
        import rig_ray as rr
        summary = rr.batch.run(
            {str(source)!r},
            {str(tmp_path / "out")!r},
            generator="transformers!smollm2-135m,max_tokens=4,temperature=0",
            template="One word about $topic.",
            progress=False,
            num_cpus=0.5,
            verbose={verbose!r},
        )
        print(summary.line())
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
        timeout=900,
    )


def _foreign(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith(OURS)]


@pytest.mark.slow
def test_a_python_batch_without_progress_leaves_stderr_empty(
    tmp_path: Path, smollm2_path: Path
) -> None:
    done = _python_batch(tmp_path, verbose=False)
    assert done.returncode == 0, done.stderr
    assert _foreign(done.stderr) == [], done.stderr  # no Ray Data logs, no Ray notices
    [line] = done.stdout.splitlines()
    assert "2 rows in, 2 generations written (0 failed)" in line


@pytest.mark.slow  # a Ray of its own, as a user gets: heavier than the default run
def test_verbose_shows_ray_datas_own_lines(tmp_path: Path, smollm2_path: Path) -> None:
    done = _python_batch(tmp_path, verbose=True)
    assert done.returncode == 0, done.stderr
    assert _foreign(done.stderr), done.stderr  # Ray Data's execution lines, as Ray prints them


@pytest.mark.slow
def test_a_vllm_cli_batch_shows_no_engine_lines(tmp_path: Path, tiny_llama_path: Path) -> None:
    """Run under `flock /tmp/vllm.lock`: it starts a vLLM engine."""
    pytest.importorskip("vllm")
    source = rows(tmp_path / "in.jsonl", 3)
    identifier = (
        f"vllm!{tiny_llama_path},dtype=bfloat16,enforce_eager=true,max_model_len=256,"
        "max_tokens=4,temperature=0"
    )
    done = subprocess.run(
        [sys.executable, "-m", "rig_ray.cli", "batch", str(source), str(tmp_path / "out"),
         "-g", identifier, "--template", "$topic", "--num-cpus", "1", "--quiet"],
        capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _foreign(done.stderr) == [], done.stderr  # no Triton, NUMA, FutureWarning, bars
    shown = done.stdout.splitlines()
    assert all(line.startswith("[") or "rows in," in line for line in shown), done.stdout
    assert "3 rows in, 3 generations written (0 failed)" in shown[-1]
