"""`rig-ray serve` as a real process. One process (one generator: the default one-deployment
app) says it serves, and answers /health 200, only once its model has loaded; answers with
auth; and on SIGTERM while requests run stops cleanly well within 30 s, each request told
the server is stopping. One more process joins a running Serve twice: without a key on a
public address it is refused, with one it checks auth against, and prints, the address
Serve really has. (503 on /health while a model loads: the split app's, in
tests/serve/test_reliability.py.) By default (direct ingress) and with --direct-ingress, the
replica itself listens on the port and answers, and SIGTERM stops it all; with
--no-direct-ingress, Serve's proxy does."""

from __future__ import annotations

import signal
import sys
import threading
import typing as t
from pathlib import Path

import httpx
import openai
import psutil
import pytest

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


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # ended meanwhile
        return []


def check_loading_then_serving(port: int, process: t.Any, log: Path, gate: Path) -> None:
    """While the model loads (its replica is in its constructor: the one deployment holds the
    routes too, so Serve's proxy holds requests until the replica is up) health is not 200
    and nothing is said; once the gate lets the load end, the serving line, a Ray of the
    process's own (its replicas at the process's niceness), health 200 and the model behind
    the key."""
    wait_for(lambda: Path(f"{gate}.loading").exists(), process, log)
    health = get(port, "/health")  # held by the proxy (a timeout), or refused: no replica yet
    assert health is None or health.status_code != 200
    assert "rig-ray: serving" not in log.read_text()
    gate.touch()
    wait_for(lambda: "rig-ray: serving" in log.read_text(), process, log)
    assert f"rig-ray: serving busy at http://127.0.0.1:{port}/v1" in log.read_text()
    started = psutil.Process(process.pid).children(recursive=True)
    assert any("raylet" in child.name() for child in started)  # a Ray of its own
    # whose replicas (and so their engines) run at the command's niceness, not Ray's 15
    replicas = [child for child in started if "ServeReplica" in " ".join(_cmdline(child))]
    assert replicas and {r.nice() for r in replicas} == {psutil.Process(process.pid).nice()}
    listening = {c.pid for c in psutil.net_connections("tcp") if c.laddr.port == port}
    direct = bool(listening & {r.pid for r in replicas})  # the replica holds the port itself
    assert direct is ("--no-direct-ingress" not in process.args)
    # Serve's own line names its proxy's port, which with direct ingress no client needs
    assert ("Application 'rig_ray' is ready at" in log.read_text()) is not direct
    assert "Token authentication" not in log.read_text()  # Ray's notice, for its own users
    health = get(port, "/health")
    assert health is not None and health.status_code == 200
    url = f"http://127.0.0.1:{port}/v1/models"
    assert httpx.get(url, timeout=10).status_code == 401  # no key, no models
    models = get(port, "/v1/models")
    assert models is not None and [m["id"] for m in models.json()["data"]] == ["busy"]


@pytest.mark.slow
@pytest.mark.parametrize("ingress", [[], ["--no-direct-ingress"]], ids=["direct", "proxy"])
def test_serving_is_said_once_loaded_and_sigterm_stops_within_30_s_telling_requests_why(
    tmp_path: Path, ingress: list[str]
) -> None:
    """By default the replica answers on the port itself (direct ingress); through Serve's
    proxy with --no-direct-ingress. Both say, answer and stop alike."""
    port, log, gate = free_port(), tmp_path / "serve.log", tmp_path / "gate"
    started = tmp_path / "started"
    started.mkdir()
    model = f"blocking!busy,started_dir={started},gate={gate}"
    command = [*MAIN, "-g", model, "--port", str(port), "--num-cpus", "0.1", *ingress]
    process = start([*command, "--max-batch-size", "1"], log, RIG_RAY_API_KEY=KEY)
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
        check_loading_then_serving(port, process, log, gate)
        children = psutil.Process(process.pid).children(recursive=True)
        for asker in askers:
            asker.start()
        # one request runs in the generator; the other runs there too, or waits for the replica
        wait_for(lambda: any(started.iterdir()), process, log)
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=30)  # it used to take about 60 s
    finally:
        gate.touch()
        if process.poll() is None:
            process.kill()
            process.wait()
    for asker in askers:
        asker.join(timeout=60)
    output = log.read_text()
    assert status == 0, output  # a SIGTERM is a clean stop
    assert "rig-ray: stopping" in output and "Traceback" not in output
    for name in ("plain", "streamed"):
        reply = replies[name]
        assert isinstance(reply, httpx.Response), reply
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"]["code"] == "server_shutting_down"
        assert reply.headers["Retry-After"] == "5"
    _, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, [p.name() for p in alive]  # no Ray process left behind


@pytest.mark.slow
def test_joining_a_serve_checks_auth_against_and_prints_the_address_it_really_has(
    tmp_path: Path,
) -> None:
    """tests/serve/join_main.py: `rig-ray serve --address auto` against a Serve started on
    0.0.0.0:port, first without $RIG_RAY_API_KEY (refused: that address is public), then,
    on a Serve started again on port + 2, with a key."""
    port, log = free_port(), tmp_path / "join.log"
    process = start([sys.executable, "-m", "tests.serve.join_main", "0.0.0.0", str(port)], log)
    try:
        status = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = f"exit {status}\n{log.read_text()}"
    without_key, _, with_key = output.partition("status: 2")
    assert with_key, output  # the first run was refused
    assert "rig-ray: error: refusing to serve on 0.0.0.0 without an API key" in without_key
    assert "rig-ray: serving" not in without_key
    assert "status: 0" in with_key, output
    joined = port + 2  # where join_main starts the second Serve
    assert f"rig-ray: serving up at http://127.0.0.1:{joined}/v1" in with_key
    assert f"on 0.0.0.0:{joined}; --host and --port do not apply" in with_key


def listening_pids(port: int) -> set[int]:
    return {
        c.pid
        for c in psutil.net_connections("tcp")
        if c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid
    }


def check_a_dead_replica_is_replaced_on_the_port(
    port: int, process: t.Any, log: Path, replicas: set[int]
) -> None:
    """The replica killed while the port has connections in TIME_WAIT (requests that the
    server closed): the one that replaces it binds the port at its first try, and answers."""
    for _ in range(3):
        httpx.get(f"http://127.0.0.1:{port}/health", headers={**AUTH, "Connection": "close"})
    closed = [
        c
        for c in psutil.net_connections("tcp")
        if c.laddr.port == port and c.status == psutil.CONN_TIME_WAIT
    ]
    assert closed  # what kept a new listener off the port for up to 60 s
    for pid in replicas:
        psutil.Process(pid).kill()
    wait_for(lambda: bool(listening_pids(port) - replicas), process, log)
    wait_for(lambda: (get(port, "/health") or httpx.Response(0)).status_code == 200, process, log)
    assert "Failed to start RequestProtocol.HTTP" not in log.read_text()


@pytest.mark.slow
def test_direct_ingress_answers_on_the_port_from_the_replica_itself(tmp_path: Path) -> None:
    port, log, gate = free_port(), tmp_path / "serve.log", tmp_path / "gate"
    gate.touch()  # loads at once
    model = f"gated!direct,gate={gate}"
    command = [*MAIN, "-g", model, "--port", str(port), "--num-cpus", "0.1", "--direct-ingress"]
    process = start(command, log, RIG_RAY_API_KEY=KEY)
    try:
        wait_for(lambda: "rig-ray: serving" in log.read_text(), process, log)
        assert f"rig-ray: serving direct at http://127.0.0.1:{port}/v1" in log.read_text()
        listening = [psutil.Process(pid).cmdline() for pid in listening_pids(port)]
        assert listening and all("ServeReplica" in " ".join(c) for c in listening), listening
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
        chunks = client.chat.completions.create(
            model="direct", messages=[{"role": "user", "content": "up?"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ready"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong").models.list()
        check_a_dead_replica_is_replaced_on_the_port(port, process, log, listening_pids(port))
        started = psutil.Process(process.pid).children(recursive=True)
        assert stop(process, signal.SIGTERM, started) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "rig-ray: stopping" in log.read_text()
