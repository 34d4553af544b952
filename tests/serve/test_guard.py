"""The endpoint holds against any client, over real HTTP on 127.0.0.1: body size (413),
prompts past the model's context (400 `context_length_exceeded`), 5xx bodies with nothing
internal in them, request timeouts (504, the generation cancelled), replicas whose engine
stopped answering replaced, and 200 concurrent clients of every kind at once."""

from __future__ import annotations

import asyncio
import collections
import re
import time
import typing as t
from pathlib import Path

import httpx
import pytest

from tests.serve.generators import LEAKY
from tests.serve.support import SMOL, Endpoint, chat_body

pytestmark = pytest.mark.engine  # the shared app serves the embedded model

CHAT = "/v1/chat/completions"
MIB = 1024 * 1024
CONTEXT = re.compile(r"maximum context length is (\d+) tokens")


def huge_body(size: int) -> bytes:
    head, tail = b'{"model": "echo", "messages": [{"role": "user", "content": "', b'"}]}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def assert_error(reply: httpx.Response, status: int, code: str) -> dict[str, t.Any]:
    assert reply.status_code == status, reply.text
    error = t.cast(dict[str, t.Any], reply.json()["error"])
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return error


# -- body size -------------------------------------------------------------------------------


def test_a_body_past_the_limit_is_413_whether_or_not_its_length_is_declared(
    endpoint: Endpoint,
) -> None:
    body = huge_body(9 * MIB)  # the default limit is 8 MiB

    def chunked() -> t.Iterator[bytes]:  # no Content-Length: counted while read
        for start in range(0, len(body), MIB):
            yield body[start : start + MIB]

    with endpoint.client() as client:
        declared = client.post(CHAT, content=body, headers={"Content-Type": "application/json"})
        streamed = client.post(CHAT, content=chunked())
        fits = client.post(CHAT, content=huge_body(MIB))
        after = client.post(CHAT, json=chat_body("still here"))
    for reply in (declared, streamed):
        error = assert_error(reply, 413, "request_too_large")
        assert str(8 * MIB) in error["message"] and error["type"] == "invalid_request_error"
    assert fits.status_code == 200
    assert after.json()["choices"][0]["message"]["content"] == "still here"


# -- context length --------------------------------------------------------------------------


async def test_prompts_past_the_context_are_400_and_leave_the_batch_alone(
    endpoint: Endpoint,
) -> None:
    overlong = chat_body("hello " * 9000, model=SMOL, max_tokens=4)
    normal = chat_body("Say hi.", model=SMOL, max_tokens=4)
    async with endpoint.async_client() as client:
        too_long, ok, *more_ok = await asyncio.gather(
            client.post(CHAT, json=overlong),
            *(client.post(CHAT, json=normal) for _ in range(3)),
        )
        [window_text] = CONTEXT.findall(too_long.json()["error"]["message"])
        window = int(window_text)
        # the prompt fits, but not with the completion it asks for
        near = chat_body("hello " * (window - 3000), model=SMOL, max_tokens=4000)
        with_completion = await client.post(CHAT, json=near)
        text = await client.post(
            "/v1/completions", json={"model": SMOL, "prompt": "hello " * 9000, "max_tokens": 2}
        )
        after = await client.post(CHAT, json=normal)
    error = assert_error(too_long, 400, "context_length_exceeded")
    assert error["param"] == "messages"
    requested = [int(n) for n in re.findall(r"(\d+) in the messages, 4 in", error["message"])]
    assert requested and requested[0] > window > 1000
    assert all(reply.status_code == 200 for reply in (ok, *more_ok, after))
    error = assert_error(with_completion, 400, "context_length_exceeded")
    assert "4000 in the completion" in error["message"] and f"{window} tokens" in error["message"]
    assert assert_error(text, 400, "context_length_exceeded")["param"] == "prompt"


# -- errors that leak nothing ----------------------------------------------------------------


def replica_logs() -> list[Path]:
    import ray

    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    return list((logs / "serve").glob("replica_*"))


def test_a_500_body_has_a_code_and_request_id_and_nothing_internal(guarded: Endpoint) -> None:
    with guarded.client() as client:
        reply = client.post(CHAT, json=chat_body(model="boom"))
    error = assert_error(reply, 500, "generator_error")
    request_id = reply.headers["x-request-id"]
    assert error["type"] == "server_error" and request_id in error["message"]
    assert "10.1.2.3" not in reply.text and "private" not in reply.text
    assert "RuntimeError" not in reply.text
    deadline = time.monotonic() + 30  # the full error is in the replica's log, under the id
    while time.monotonic() < deadline:
        lines = [
            line
            for path in replica_logs()
            for line in path.read_text(errors="replace").splitlines()
            if request_id in line
        ]
        if any(LEAKY in line for line in lines):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"request {request_id} is not in the replica logs")


def test_an_item_failure_body_has_a_code_and_request_id_only(endpoint: Endpoint) -> None:
    with endpoint.client() as client:
        reply = client.post(CHAT, json=chat_body("please FAIL"))
    error = assert_error(reply, 422, "generation_failed")
    assert reply.headers["x-request-id"] in error["message"]
    assert "FAIL" not in error["message"] and "refused" not in error["message"]


@pytest.mark.slow  # Serve retries the ingress's constructor first (about 25 s)
@pytest.mark.parametrize("one_deployment", [None, False], ids=["one", "split"])
def test_an_ingress_without_its_key_variable_does_not_start(
    local_serve: int, one_deployment: bool | None
) -> None:
    from ray import serve

    from rig_ray.serve import INGRESS_NAME, build_app
    from tests.serve.generators import ChatOnlyGenerator

    app = build_app(
        ChatOnlyGenerator(model="locked"),
        api_key_env="RIG_RAY_TEST_KEY_NOT_SET",
        ray_actor_options={"num_cpus": 0.1},
        one_deployment=one_deployment,
    )
    routes = "locked" if one_deployment is None else INGRESS_NAME  # the routes' deployment
    try:
        with pytest.raises(RuntimeError, match=routes):
            serve.run(app, name="locked", route_prefix="/locked")
        status = serve.status().applications["locked"].deployments[routes]
        assert "$RIG_RAY_TEST_KEY_NOT_SET is not set where the ingress runs" in status.message
    finally:
        serve.delete("locked")


# -- time limits -----------------------------------------------------------------------------


async def test_a_hanging_generation_times_out_as_504_and_the_next_request_succeeds(
    guarded: Endpoint,
) -> None:
    async with guarded.async_client() as client:
        started = time.monotonic()
        hung = await client.post(CHAT, json=chat_body("HANG", model="hang"))
        waited = time.monotonic() - started
        next_one = await client.post(CHAT, json=chat_body("hi", model="hang"))
    error = assert_error(hung, 504, "request_timeout")
    assert error["type"] == "timeout" and "4 s" in error["message"]
    assert 3.5 < waited < 30
    # the hung engine call was cancelled, so it no longer holds the replica's engine slot (else
    # this request would wait behind it, and time out too)
    assert next_one.status_code == 200, next_one.text


async def test_streamed_requests_that_fail_before_any_piece_get_error_statuses(
    guarded: Endpoint, endpoint: Endpoint
) -> None:
    async with guarded.async_client() as client:
        hung = await client.post(CHAT, json=chat_body("HANG", model="hang", stream=True))
    async with endpoint.async_client() as client:
        failed = await client.post(CHAT, json=chat_body("please FAIL", stream=True))
    # no piece came before the deadline: an ordinary 504, not a stream
    assert_error(hung, 504, "request_timeout")
    assert_error(failed, 422, "generation_failed")


@pytest.mark.slow
async def test_a_replica_whose_engine_stopped_answering_is_replaced(guarded: Endpoint) -> None:
    async with guarded.async_client() as client:
        first = await client.post(CHAT, json=chat_body("pid", model="stuck"))
        old_pid = first.json()["choices"][0]["message"]["content"]
        stuck = await client.post(CHAT, json=chat_body("STICK", model="stuck"))
        assert stuck.status_code == 504
        statuses: collections.Counter[int] = collections.Counter()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            reply = await client.post(CHAT, json=chat_body("pid", model="stuck"))
            statuses[reply.status_code] += 1
            if reply.status_code == 200:
                break
            await asyncio.sleep(1)
    assert reply.status_code == 200, statuses
    assert reply.json()["choices"][0]["message"]["content"] != old_pid  # a new replica
    assert set(statuses) <= {200, 503, 504}


# -- overload --------------------------------------------------------------------------------


@pytest.mark.slow
async def test_200_clients_of_every_kind_get_no_server_errors(endpoint: Endpoint) -> None:
    oversized = huge_body(9 * MIB)
    requests: list[tuple[str, dict[str, t.Any] | bytes]] = []
    requests += [(CHAT, chat_body(f"fast {i}")) for i in range(100)]
    requests += [(CHAT, oversized)] * 20
    requests += [(CHAT, chat_body("hello " * 9000, model=SMOL))] * 30
    requests += [(CHAT, chat_body("wait", model="slow"))] * 40
    requests += [(CHAT, chat_body("Hi", model=SMOL, max_tokens=2))] * 10

    async def send(client: httpx.AsyncClient, path: str, body: t.Any) -> int:
        if isinstance(body, bytes):
            headers = {"Content-Type": "application/json"}
            reply = await client.post(path, content=body, headers=headers)
        else:
            reply = await client.post(path, json=body)
        if reply.status_code != 200:
            assert reply.json()["error"]["code"], reply.text
        return reply.status_code

    async with endpoint.async_client(connections=250) as client:
        statuses = collections.Counter(
            await asyncio.gather(*(send(client, path, body) for path, body in requests))
        )
        after = await client.post(CHAT, json=chat_body("Hi", model=SMOL, max_tokens=2))
        echo = await client.post(CHAT, json=chat_body("after"))
    server_errors = {s: c for s, c in statuses.items() if s >= 500 and s != 503}
    assert not server_errors, statuses
    assert statuses[413] == 20 and statuses[400] == 30, statuses
    assert statuses[200] >= 110, statuses
    assert after.status_code == 200 and echo.json()["choices"][0]["message"]["content"] == "after"
