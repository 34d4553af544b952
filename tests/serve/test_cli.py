"""`rig-ray serve`: its help, bad input (one line, status 2, no Ray started), and the real
command in a subprocess that serves, answers, and stops cleanly on SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from rig_ray.serve import cli
from rig_ray.serve import direct as serve_direct
from tests.serve.support import free_port

ROOT = Path(__file__).resolve().parents[2]
# A LiteLLM generator loads nothing, so the command is up as soon as Serve is.
REMOTE = "openai/upstream,api_base=http://127.0.0.1:9/v1"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rig-ray")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["serve", *argv])


def test_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        parse(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--generator", "--name", "--host", "--port", "--replicas", "--num-cpus", "--num-gpus",
        "--max-batch-size", "--batch-wait-timeout-s", "--max-ongoing-requests",
        "--max-queued-requests", "--max-tokens-limit", "--address", "RIG_RAY_API_KEY",
        "/v1/chat/completions", "SIGTERM", "--max-body-bytes", "--max-messages", "--max-stop",
        "--max-stop-length", "--max-n", "--request-timeout-s", "--no-auth", "--one-deployment",
        "--split-deployments",
    ):  # fmt: skip
        assert flag in out, flag


def test_options_reach_the_served_models() -> None:
    args = parse(["-g", "vllm!m", "--num-gpus", "1", "--replicas", "2", "--max-batch-size", "8"])
    [model] = cli.served_models(args.generators, name=args.names, **cli._options(args))
    assert model.ray_actor_options == {"num_cpus": 1, "num_gpus": 1}
    assert (model.num_replicas, model.max_batch_size) == (2, 8)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-g", "nope!m"], "unknown provider 'nope'"),
        (["-g", "vllm!m,tempurature=1"], "did you mean 'temperature'"),
        (["-g", "vllm!m", "-g", "transformers!m"], "own name"),
        (["-g", "vllm!m", "--name", "a", "--name", "b"], "2 names for 1 generators"),
        (["-g", "vllm!m", "--max-batch-size", "0"], "max_batch_size"),
        (["-g", "vllm!m", "--replicas", "0"], "num_replicas"),
        (["-g", "vllm!a", "-g", "vllm!b", "--one-deployment"], "serves one generator, not 2"),
        (["-g", "vllm!m", "--direct-ingress", "--replicas", "2"], "takes one replica"),
        (["-g", "vllm!m", "--direct-ingress", "--split-deployments"], "leave out --split"),
        (["-g", "vllm!m", "--direct-ingress", "--address", "auto"], "a Ray of this command"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.setattr(cli, "_start", lambda *args: pytest.fail("Ray must not start"))
    assert cli.run(parse(argv)) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("rig-ray: error: ")
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "myhost.example"])
def test_a_public_address_without_a_key_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    monkeypatch.delenv("RIG_RAY_API_KEY", raising=False)
    monkeypatch.setattr(cli, "_start", lambda *args: pytest.fail("Ray must not start"))
    assert cli.run(parse(["-g", REMOTE, "--host", host])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rig-ray: error: ")
    assert "RIG_RAY_API_KEY" in err and "--no-auth" in err and host in err


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ("", [], "RIG_RAY_API_KEY is set but empty"),
        ("  ", ["--host", "0.0.0.0"], "RIG_RAY_API_KEY is set but empty"),
        ("k", ["--no-auth"], "drop one"),
    ],
)
def test_an_empty_or_contradicted_key_is_refused(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: str,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("RIG_RAY_API_KEY", env)
    monkeypatch.setattr(cli, "_start", lambda *args: pytest.fail("Ray must not start"))
    assert cli.run(parse(["-g", REMOTE, *argv])) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "argv"),
    [
        (None, ["--host", "0.0.0.0", "--no-auth"]),
        ("k", ["--host", "0.0.0.0"]),
        (None, ["--host", "127.0.0.1"]),
        (None, ["--host", "localhost"]),
    ],
)
def test_a_key_or_no_auth_or_loopback_starts(
    monkeypatch: pytest.MonkeyPatch, env: str | None, argv: list[str]
) -> None:
    if env is None:
        monkeypatch.delenv("RIG_RAY_API_KEY", raising=False)
    else:
        monkeypatch.setenv("RIG_RAY_API_KEY", env)
    started = []
    monkeypatch.setattr(cli, "_start", lambda app, *args: started.append(app) or 1 / 0)
    monkeypatch.setattr(cli, "_stop", lambda *args: None)
    assert cli.run(parse(["-g", REMOTE, "--port", str(free_port()), *argv])) == 1
    assert started


def test_limits_and_timeout_reach_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    monkeypatch.delenv("RIG_RAY_API_KEY", raising=False)
    monkeypatch.setattr(cli, "build_app", lambda served, **kwargs: seen.update(kwargs))
    monkeypatch.setattr(cli, "_start", lambda *args: 1 / 0)
    monkeypatch.setattr(cli, "_stop", lambda *args: None)
    argv = ["-g", REMOTE, "--max-body-bytes", "100", "--max-messages", "3", "--max-stop", "2"]
    argv += ["--max-stop-length", "9", "--max-n", "4", "--request-timeout-s", "7.5"]
    cli.run(parse([*argv, "--port", str(free_port())]))
    limits = seen["limits"]
    assert (limits.max_body_bytes, limits.max_messages, limits.max_stop) == (100, 3, 2)
    assert (limits.max_stop_length, limits.max_n) == (9, 4)
    assert seen["request_timeout_s"] == 7.5 and seen["api_key"] is None
    assert seen["one_deployment"] is None  # build_app decides by the number of generators
    cli.run(parse([*argv, "--port", str(free_port()), "--one-deployment"]))
    assert seen["one_deployment"] is True
    cli.run(parse([*argv, "--port", str(free_port()), "--split-deployments"]))
    assert seen["one_deployment"] is False


def test_one_deployment_and_split_deployments_exclude_each_other(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(["-g", REMOTE, "--one-deployment", "--split-deployments"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_port_in_use_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = parse(["-g", REMOTE, "--port", str(port), "--address", "local"])
        assert cli.run(args) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.parametrize("port", ["0", "70000", "eighty"])
def test_a_port_that_is_no_port_is_refused_by_the_parser(
    capsys: pytest.CaptureFixture[str], port: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(["-g", REMOTE, "--port", port])
    assert exit_.value.code == 2
    assert "a port is a whole number from 1 to 65535" in capsys.readouterr().err


@pytest.mark.parametrize("cpus", ["-1", "nan", "inf"])
def test_cpus_that_are_no_count_are_refused_before_ray_starts(
    capsys: pytest.CaptureFixture[str], cpus: str
) -> None:
    # Ray refused them only as the app deployed, with a traceback of its own.
    assert cli.run(parse(["-g", REMOTE, "--num-cpus", cpus, "--address", "local"])) == 2
    assert "num_cpus must be a number of at least 0" in capsys.readouterr().err


SIGINT_AS_A_CONSOLE_HAS_IT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)
"""Runs a command with SIGINT's default action, as a console starts it. A suite started in
the background by a shell without job control (`... &` in a script) ignores SIGINT, its
children inherit that, and Python then never turns Ctrl-C into KeyboardInterrupt."""


def start(command: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    """Start `command` in the repo root with its output in `log` (a pipe could fill up), with
    SIGINT as a console gives it."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    environment.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-c", SIGINT_AS_A_CONSOLE_HAS_IT, *command]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=out)


def wait_for(condition: t.Callable[[], bool], process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"not up in time (exit status {process.poll()}):\n{log.read_text()}")


def stop(
    process: subprocess.Popen[bytes],
    sig: int,
    started: list[psutil.Process],
    heard: tuple[Path, str] | None = None,
) -> int:
    """Send `sig`, wait for the exit, and check that no process it started is left. With
    `heard` (a log, and the line the process writes once it acts on the signal), the signal
    is sent once more where that line has not come within a minute, as a console user
    presses Ctrl-C again."""
    process.send_signal(sig)
    if heard is not None and not _said(process, *heard, within_s=60):
        process.send_signal(sig)
    try:
        status = process.wait(timeout=300)  # Serve's own shutdown is slow on a busy machine
    except subprocess.TimeoutExpired:
        tail = heard[0].read_text(errors="replace")[-4000:] if heard else ""
        raise AssertionError(f"no exit 300 s after {sig!r}; the end of its log:\n{tail}") from None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    _, alive = psutil.wait_procs(started, timeout=60)
    assert not alive, [p.name() for p in alive]  # no Ray process left behind
    return status


def _said(process: subprocess.Popen[bytes], log: Path, line: str, within_s: float) -> bool:
    """Whether `line` is in `log` (or the process has ended) within `within_s`."""
    deadline = time.monotonic() + within_s
    while process.poll() is None and time.monotonic() < deadline:
        if line in log.read_text(errors="replace"):
            return True
        time.sleep(0.5)
    return process.poll() is not None or line in log.read_text(errors="replace")


def health(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
@pytest.mark.engine
def test_serve_run_of_the_config_file(tmp_path: Path, smollm2_path: Path) -> None:
    """`serve run jobs/serve_config.yaml` (on a free port) serves the embedded model."""
    config = yaml.safe_load((ROOT / "jobs" / "serve_config.yaml").read_text())
    port, log = free_port(), tmp_path / "serve.log"
    config["http_options"]["port"] = port
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    serve = Path(sys.executable).with_name("serve")
    command = [str(serve), "run", "--address", "local", str(tmp_path / "config.yaml")]
    process = start(command, log, RIG_RAY_API_KEY="config-key")
    try:
        wait_for(lambda: health(port), process, log)
        body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}]}
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        assert httpx.post(url, json=body, timeout=300).status_code == 401
        headers = {"Authorization": "Bearer config-key"}
        reply = httpx.post(url, json=body, headers=headers, timeout=300)
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
    finally:
        try:
            started = psutil.Process(process.pid).children(True)
        except psutil.NoSuchProcess:  # it ended already: the error above is the one to see
            started = []
        stop(process, signal.SIGINT, started, heard=(log, "Got KeyboardInterrupt"))


def test_sigterm_handler_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """run() gives the signal handlers back, even when start-up fails."""

    def fail(app: t.Any, *args: t.Any) -> None:
        raise RuntimeError("deploy failed")

    monkeypatch.setattr(cli, "_start", fail)
    monkeypatch.setattr(cli, "_stop", lambda *args: None)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.run(parse(["-g", REMOTE, "--port", str(free_port())])) == 1
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_a_model_that_cannot_load_is_status_1_with_the_reason(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "rig_ray.serve.cli", "-g", "transformers!/no/such/model"]
    process = start([*command, "--port", str(free_port()), "--num-cpus", "0.5"], log)
    try:
        status = process.wait(timeout=400)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    [error] = [line for line in log.read_text().splitlines() if line.startswith("rig-ray: e")]
    assert status == 1
    assert error.startswith("rig-ray: error: deployment 'model' failed to start: ")
    assert "ModelNotAvailableError" in error and "/no/such/model" in error


@pytest.mark.parametrize(
    ("asked", "settings", "direct"),
    [
        (None, {}, True),  # one generator, one replica, a Ray of its own: the default
        (None, {"replicas": 2}, False),
        (None, {"generators": 2}, False),
        (None, {"one_deployment": False}, False),
        (None, {"address": "auto"}, False),
        (False, {}, False),
        (True, {}, True),
    ],
)
def test_direct_ingress_is_the_default_where_it_applies(
    asked: bool | None, settings: dict[str, t.Any], direct: bool
) -> None:
    where = {"generators": 1, "replicas": 1, "address": "local", "one_deployment": None}
    assert serve_direct.applies(asked, **{**where, **settings}) is direct


def test_the_flags_of_direct_ingress() -> None:
    assert parse(["-g", "vllm!m"]).direct_ingress is None
    assert parse(["-g", "vllm!m", "--direct-ingress"]).direct_ingress is True
    assert parse(["-g", "vllm!m", "--no-direct-ingress"]).direct_ingress is False
