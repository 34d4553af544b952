"""The endpoint against clients and loads nobody planned for, over real HTTP on fakes: a 64 MiB
body is a 413 the client sees (not a reset), a body that never arrives whole is a 408, JSON
nested deep is a 400, an unset max_tokens counts as the engine's default in the context check,
and the endpoint is not ready (/health 503, /v1/models without it) before a model loads."""

from __future__ import annotations

import json
import socket
import time
import typing as t
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import openai
import pytest

from rig_ray.errors import ServeRequestError
from rig_ray.generator.base import DEFAULT_MAX_TOKENS, Generator
from rig_ray.generator.params import GenerateParams
from rig_ray.message import Message
from rig_ray.serve.limits import check_context
from tests.serve.support import KEY, Endpoint, chat_body

MIB = 1024 * 1024


def huge_chat(size: int) -> bytes:
    head, tail = b'{"model": "echo", "messages": [{"role": "user", "content": "', b'"}]}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def assert_still_answers(endpoint: Endpoint) -> None:
    with endpoint.client() as client:
        reply = client.post("/v1/chat/completions", json=chat_body("still here"))
    assert reply.status_code == 200, reply.text


# -- 413 for a body far past the limit -----------------------------------------------------


def test_a_64_mib_body_through_urllib_gets_the_413(echo_app: Endpoint) -> None:
    request = urllib.request.Request(
        f"{echo_app.base_url}/chat/completions",
        data=huge_chat(64 * MIB),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=120)
    assert refused.value.code == 413
    error = json.loads(refused.value.read())["error"]
    assert error["code"] == "request_too_large" and str(8 * MIB) in error["message"]
    assert_still_answers(echo_app)


def test_a_64_mib_body_through_the_openai_client_gets_the_413_once(echo_app: Endpoint) -> None:
    sent: list[int] = []

    def count(request: httpx.Request) -> None:
        sent.append(1)

    http = httpx.Client(event_hooks={"request": [count]}, timeout=120)
    client = openai.OpenAI(base_url=echo_app.base_url, api_key=KEY, max_retries=2, http_client=http)
    with client, pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "x" * (64 * MIB)}]
        )
    assert refused.value.status_code == 413
    assert refused.value.body["code"] == "request_too_large"  # type: ignore[index]
    assert len(sent) == 1  # a 413 is not retried (a reset would be, upload and all)
    assert_still_answers(echo_app)


# -- a body that never arrives whole -------------------------------------------------------


def test_a_body_that_stops_coming_is_408_within_the_body_timeout(echo_app: Endpoint) -> None:
    head = (
        f"POST {echo_app.prefix}/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", echo_app.port), timeout=60) as sock:
        sock.sendall(head + b'{"model": "echo", ')  # and nothing more
        reply = b""
        while b"\r\n\r\n" not in reply:
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert_still_answers(echo_app)


# -- JSON nested deep ----------------------------------------------------------------------


@pytest.mark.parametrize("depth", [70, 100_000])
def test_json_nested_deep_is_a_400(echo_app: Endpoint, depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    for field in (b"metadata", b"messages", b"model"):
        body = b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "%s": %s}'
        with echo_app.client() as client:
            reply = client.post("/v1/chat/completions", content=body % (field, nested))
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["code"] == "invalid_json"
    assert_still_answers(echo_app)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_lone_surrogate_is_a_400_not_a_reply_that_cannot_be_encoded(
    echo_app: Endpoint, path: str
) -> None:
    """Found by the fuzz test: a valid JSON escape of half a surrogate pair, echoed by the
    model, made the reply fail to encode (a 500)."""
    field = b'"messages": [{"role": "user", "content": "a\\ud800b"}]'
    if path.endswith("/completions") and "chat" not in path:
        field = b'"prompt": "a\\ud800b"'
    with echo_app.client() as client:
        reply = client.post(path, content=b'{"model": "echo", %s}' % field)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] == "invalid_json"
    assert "surrogate" in reply.json()["error"]["message"]


# -- the context check with max_tokens unset -----------------------------------------------


class CountingGenerator(Generator):
    """A context of 1000 tokens; each prompt counts as many tokens as its characters."""

    async def context_window(self) -> int | None:
        return 1000

    async def count_prompt_tokens(self, prompt: t.Sequence[Message] | str) -> int | None:
        return len(prompt) if isinstance(prompt, str) else len(prompt[-1].content)


async def test_an_unset_max_tokens_counts_as_what_local_engines_generate() -> None:
    generator = CountingGenerator(model="counting")
    fits = "x" * (1000 - DEFAULT_MAX_TOKENS)
    await check_context(generator, [fits], GenerateParams(), param="prompt")
    with pytest.raises(ServeRequestError) as refused:
        await check_context(generator, [fits + "x"], GenerateParams(), param="prompt")
    assert refused.value.code == "context_length_exceeded"
    assert f"{DEFAULT_MAX_TOKENS} in the completion" in str(refused.value)
    await check_context(generator, [fits + "x"], GenerateParams(max_tokens=10), param="prompt")


# -- readiness -----------------------------------------------------------------------------


def poll(what: t.Callable[[], bool], within_s: float = 120.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_not_ready_until_every_model_has_loaded(local_serve: int, tmp_path: Path) -> None:
    from ray import serve

    from rig_ray.generator import registry
    from rig_ray.serve import ServedModel, build_app
    from tests.fakes import EchoGenerator
    from tests.serve.generators import GatedGenerator

    gate = tmp_path / "gate"
    saved = dict(registry._providers)
    registry.register_generator("gated", GatedGenerator)
    fake = {"ray_actor_options": {"num_cpus": 0.1}}
    models = [
        ServedModel(generator=EchoGenerator(model="quick"), **fake),
        ServedModel(generator=f"gated!slow,gate={gate}", **fake),
    ]
    endpoint = Endpoint(local_serve, "/gated")
    try:
        serve._run(
            build_app(models, api_key=KEY), name="gated", route_prefix="/gated", _blocking=False
        )
        with endpoint.client() as client:

            def models_listed() -> list[str]:
                reply = client.get("/v1/models")
                return [m["id"] for m in reply.json()["data"]] if reply.status_code == 200 else []

            assert poll(lambda: models_listed() == ["quick"])  # the fake is up, the gated not
            health = client.get("/health")
            assert health.status_code == 503 and health.json()["loading"] == ["slow"]
            gate.touch()
            assert poll(lambda: client.get("/health").status_code == 200)
            assert models_listed() == ["quick", "slow"]
            reply = client.post("/v1/chat/completions", json=chat_body(model="slow"))
            assert reply.json()["choices"][0]["message"]["content"] == "ready"
    finally:
        gate.touch()
        serve.delete("gated")
        registry._providers.clear()
        registry._providers.update(saved)
