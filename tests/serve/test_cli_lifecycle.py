"""`rig-ray serve` as a real process: it says it serves only once every model has loaded,
answers with auth and stops cleanly on SIGTERM; a SIGTERM stops it well within 30 s while
requests run (each told the server is stopping); and joining a running Serve checks auth
against, and prints, the address it really has."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import httpx
import psutil

from tests.serve.support import free_port
from tests.serve.test_cli import start, stop, wait_for

KEY = "lifecycle-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAIN = [sys.executable, "-m", "tests.serve.serve_main"]


def get(port: int, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", headers=AUTH, timeout=10)
    except httpx.HTTPError:
        return None


def test_serving_is_said_and_health_is_200_only_once_the_model_has_loaded(
    tmp_path: Path,
) -> None:
    port, log, gate = free_port(), tmp_path / "serve.log", tmp_path / "gate"
    command = [*MAIN, "-g", f"gated!slow,gate={gate}", "--port", str(port), "--num-cpus", "0.1"]
    process = start(command, log, RIG_RAY_API_KEY=KEY)
    try:
        wait_for(
            lambda: (get(port, "/health") or httpx.Response(0)).status_code == 503, process, log
        )
        models = get(port, "/v1/models")
        assert models is not None and models.json()["data"] == []
        assert "rig-ray: serving" not in log.read_text()
        gate.touch()
        wait_for(lambda: "rig-ray: serving" in log.read_text(), process, log)
        assert f"rig-ray: serving slow at http://127.0.0.1:{port}/v1" in log.read_text()
        started = psutil.Process(process.pid).children(recursive=True)
        assert any("raylet" in child.name() for child in started)  # a Ray of its own
        health = get(port, "/health")
        assert health is not None and health.status_code == 200
        url = f"http://127.0.0.1:{port}/v1/models"
        assert httpx.get(url, timeout=10).status_code == 401  # no key, no models
        models = get(port, "/v1/models")
        assert models is not None and [m["id"] for m in models.json()["data"]] == ["slow"]
    finally:
        gate.touch()
        status = stop(process, signal.SIGTERM, psutil.Process(process.pid).children(True))
    output = log.read_text()
    assert status == 0, output  # a SIGTERM is a clean stop
    assert "rig-ray: stopping" in output and "Traceback" not in output


def test_sigterm_stops_within_30_s_and_running_requests_hear_why(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    started = tmp_path / "started"
    started.mkdir()
    model = f"blocking!busy,started_dir={started}"
    command = [
        *MAIN,
        "-g",
        model,
        "--port",
        str(port),
        "--num-cpus",
        "0.1",
        "--max-batch-size",
        "1",
    ]
    process = start(command, log, RIG_RAY_API_KEY=KEY)
    replies: dict[str, httpx.Response | str] = {}

    def ask(name: str, stream: bool) -> None:
        body = {"model": "busy", "messages": [{"role": "user", "content": name}], "stream": stream}
        try:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            replies[name] = httpx.post(url, json=body, headers=AUTH, timeout=120)
        except httpx.HTTPError as error:
            replies[name] = repr(error)

    askers = [
        threading.Thread(target=ask, args=(name, stream))
        for name, stream in (("plain", False), ("streamed", True))
    ]
    try:
        wait_for(lambda: "rig-ray: serving" in log.read_text(), process, log)
        children = psutil.Process(process.pid).children(recursive=True)
        for asker in askers:
            asker.start()
        # one request runs in the generator; the other runs there too, or waits for the replica
        wait_for(lambda: any(started.iterdir()), process, log)
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=30)  # it used to take about 60 s
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    for asker in askers:
        asker.join(timeout=60)
    assert status == 0, log.read_text()
    for name in ("plain", "streamed"):
        reply = replies[name]
        assert isinstance(reply, httpx.Response), reply
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"]["code"] == "server_shutting_down"
        assert reply.headers["Retry-After"] == "5"
    _, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, [p.name() for p in alive]


def join(tmp_path: Path, host: str, key: str | None) -> tuple[int, str]:
    """Run tests/serve/join_main.py: `rig-ray serve --address auto` against a Serve started on
    host:port; its exit status and output."""
    port, log = free_port(), tmp_path / "join.log"
    env = {"RIG_RAY_API_KEY": key} if key else {}
    process = start([sys.executable, "-m", "tests.serve.join_main", host, str(port)], log, **env)
    try:
        status = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return port, f"exit {status}\n{log.read_text()}"


def test_joining_a_serve_on_a_public_address_without_a_key_is_refused(tmp_path: Path) -> None:
    _, output = join(tmp_path, "0.0.0.0", key=None)
    assert "status: 2" in output, output
    assert "rig-ray: error: refusing to serve on 0.0.0.0 without an API key" in output
    assert "rig-ray: serving" not in output


def test_joining_prints_the_address_serve_really_listens_on(tmp_path: Path) -> None:
    port, output = join(tmp_path, "127.0.0.1", key="joined-key")
    assert "status: 0" in output, output
    assert f"rig-ray: serving up at http://127.0.0.1:{port}/v1" in output
    assert f"on 127.0.0.1:{port}; --host and --port do not apply" in output
