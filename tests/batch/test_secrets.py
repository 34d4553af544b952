"""Secrets through a whole batch run: a fake provider whose errors (and prints, and log
records) quote every secret it holds. None may reach the console, log records, the Parquet
parts or the manifest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import typing as t
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from rig_ray.batch import run
from rig_ray.batch.manifest import MANIFEST_NAME
from tests.batch.members import output_rows, rows
from tests.fakes import LeakyGenerator
from tests.secret_strategies import GeneratorSecrets, generator_identifiers, leaks

pytestmark = pytest.mark.usefixtures("local_ray", "fake_providers")

FAST = {"num_cpus": 0.25, "progress": False}
KEY = "sk-live-4f9Qb2ZzBareKey"
"""A key with nothing around it that looks like a credential: only the generator knows it."""
ROOT = Path(__file__).resolve().parents[2]


def _folder_bytes(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file())


def test_the_error_column_loses_a_key_the_provider_error_quotes(tmp_path: Path) -> None:
    source = rows(tmp_path / "in.jsonl", 2)
    rows(source, 1, start=2, topic="FAIL")
    out = tmp_path / "out"
    generator = LeakyGenerator(model="m", api_key=KEY)
    summary = run(str(source), str(out), generator=generator, template="$topic", **FAST)
    assert summary.failed == 1
    errors = [r["error"] for r in output_rows(out) if r["error"]]
    assert len(errors) == 1 and "invalid api key ***" in errors[0], errors
    assert KEY.encode() not in _folder_bytes(out)


class _Seen:
    """Everything the driver showed: captured stdout / stderr and log records, gathered
    until the forwarded actor lines have come."""

    def __init__(self, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture):
        self.capsys, self.caplog, self.text = capsys, caplog, ""

    def gather(self, until: str, limit_s: float = 60.0) -> str:
        deadline = time.monotonic() + limit_s
        while True:
            captured = self.capsys.readouterr()
            self.text += captured.out + captured.err
            if until in self.text or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        records = [record.getMessage() for record in self.caplog.records]
        return self.text + "\n".join(records) + self.caplog.text


def _leaky_run(
    secrets: GeneratorSecrets, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    folder = Path(tempfile.mkdtemp(prefix="rig_ray-secrets-"))
    try:
        source = rows(folder / "in.jsonl", 2)
        rows(source, 1, start=2, topic="FAIL")
        out = folder / "out"
        capsys.readouterr()
        caplog.clear()
        tag = "model" + "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex[:12])
        summary = run(
            str(source),
            str(out),
            generator=secrets.identifier.replace("leaky!m,", f"leaky!{tag},", 1),
            template="$topic",
            verbose=True,
            **FAST,
        )
        assert summary.failed == 1
        shown = _Seen(capsys, caplog).gather(until=f"for {tag}:")
        assert f"for {tag}:" in shown  # the actor's own lines were forwarded (verbose), redacted
        assert (out / MANIFEST_NAME).is_file() and list(out.glob("*.parquet"))
        written = _folder_bytes(out).decode("latin-1")
        for value in secrets.secrets:
            assert not leaks(value, shown, piece=6), (value, shown[-2000:])
            assert not leaks(value, written, piece=6), value
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(secrets=generator_identifiers())
def test_no_secret_reaches_console_logs_parquet_or_manifest(
    secrets: GeneratorSecrets, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    _leaky_run(secrets, capsys, caplog)


@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(secrets=generator_identifiers())
def test_no_secret_reaches_console_logs_parquet_or_manifest_explored(
    secrets: GeneratorSecrets, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    _leaky_run(secrets, capsys, caplog)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    import ray

    # The CLI joins the session's Ray (as `--address` does) rather than starting one of its own.
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": address}
    return subprocess.run(
        [sys.executable, "-m", "tests.batch.fake_cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize("verbose", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_the_cli_console_holds_no_secret(tmp_path: Path, verbose: bool) -> None:
    password, query, header = "Zqp@ss:w@rd!", "ZqQueryValue%2B9", "ZqHeaderCred/+="
    from rig_ray.generator.identifier import encode_value

    url = f"https://user:{password}@proxy.example/v1?code={query}"
    identifier = (
        f"leaky!m,api_key={KEY},api_base={encode_value(url)},"
        f"extra={encode_value({'headers': {'Authorization': f'Token {header}'}})}"
    )
    source = rows(tmp_path / "in.jsonl", 2)
    rows(source, 1, start=2, topic="FAIL")
    out = tmp_path / "out"
    flags = ["--verbose"] if verbose else []
    done = _cli("batch", str(source), str(out), "--generator", identifier, "--template", "$topic",
                "--num-cpus", "0.25", "--quiet", *flags)  # fmt: skip
    assert done.returncode == 1, done.stderr  # one generation failed
    shown = done.stdout + done.stderr
    for value in (KEY, password, query, header):
        assert value not in shown, shown
        assert value.encode() not in _folder_bytes(out)
    assert "invalid api key ***" in done.stdout  # the failed row shown, scrubbed
    if not verbose:  # the actors' own lines stay out of the console
        assert "401 from" not in done.stderr.replace(done.stdout, ""), done.stderr


__all__: t.Sequence[str] = []
