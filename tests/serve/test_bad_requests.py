"""Bad requests over real HTTP: each gets its OpenAI error body and a 4xx status, and no value
a client can send in any field makes the server answer 500 (fake generators: logic only)."""

from __future__ import annotations

import json
import typing as t

import pytest

from tests.serve.support import Endpoint, chat_body

pytestmark = pytest.mark.engine  # the shared test app also serves the embedded model

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
Body = dict[str, t.Any] | bytes


def text_body(prompt: t.Any = "hi", **fields: t.Any) -> dict[str, t.Any]:
    return {"model": "echo", "prompt": prompt, **fields}


def without(body: dict[str, t.Any], key: str) -> dict[str, t.Any]:
    return {k: v for k, v in body.items() if k != key}


def message(**fields: t.Any) -> dict[str, t.Any]:
    return {"model": "echo", "messages": [fields]}


def case(
    name: str, body: Body, code: str, param: str | None, *, path: str = CHAT, status: int = 400
) -> t.Any:
    return pytest.param(path, body, status, code, param, id=name)


CASES = [
    case("not json", b"{not json", "invalid_json", None),
    case("empty body", b"", "invalid_json", None),
    case("not utf-8", b'{"model": "\xff"}', "invalid_json", None),
    case("json array", b"[1, 2]", "invalid_json", None),
    case(
        "NaN",
        b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
        "invalid_value",
        "temperature",
    ),
    case("no model", without(chat_body(), "model"), "missing_required_parameter", "model"),
    case("empty model", chat_body(model=""), "invalid_value", "model"),
    case("model not a str", chat_body(model=5), "invalid_type", "model"),
    case("unknown model", chat_body(model="gpt-9"), "model_not_found", "model", status=404),
    case("no messages", {"model": "echo"}, "missing_required_parameter", "messages"),
    case("no message", {"model": "echo", "messages": []}, "invalid_value", "messages"),
    case("messages a str", {"model": "echo", "messages": "hi"}, "invalid_type", "messages"),
    case("message a number", {"model": "echo", "messages": [5]}, "invalid_type", "messages[0]"),
    case("unknown role", message(role="robot", content="hi"), "invalid_value", "messages[0].role"),
    case("no role", message(content="hi"), "missing_required_parameter", "messages[0].role"),
    case("no content", message(role="user"), "invalid_value", "messages[0]"),
    case(
        "content a number", message(role="user", content=5), "invalid_type", "messages[0].content"
    ),
    case(
        "image part",
        message(role="user", content=[{"type": "image_url", "image_url": {}}]),
        "invalid_value",
        "messages[0].content[0].type",
    ),
    case(
        "tool calls",
        message(role="assistant", content="", tool_calls=[{"id": "1"}]),
        "invalid_value",
        "messages[0]",
    ),
    case(
        "unknown message key",
        message(role="user", content="hi", mood="sad"),
        "unknown_parameter",
        "messages[0].mood",
    ),
    case("temperature < 0", chat_body(temperature=-1), "invalid_value", "temperature"),
    case("temperature > 2", chat_body(temperature=2.5), "invalid_value", "temperature"),
    case("temperature a word", chat_body(temperature="hot"), "invalid_type", "temperature"),
    case("top_p 0", chat_body(top_p=0), "invalid_value", "top_p"),
    case("top_p > 1", chat_body(top_p=1.5), "invalid_value", "top_p"),
    case("max_tokens 0", chat_body(max_tokens=0), "invalid_value", "max_tokens"),
    case("max_tokens over the limit", chat_body(max_tokens=10**6), "invalid_value", "max_tokens"),
    case("max_tokens a float", chat_body(max_tokens=1.5), "invalid_type", "max_tokens"),
    case("n 0", chat_body(n=0), "invalid_value", "n"),
    case("n too large", chat_body(n=1000), "invalid_value", "n"),
    case("stop a number", chat_body(stop=5), "invalid_type", "stop"),
    case("too many stops", chat_body(stop=["s"] * 17), "invalid_value", "stop"),
    case("stop too long", chat_body(stop=["s" * 257]), "invalid_value", "stop"),
    case(
        "too many messages",
        {"model": "echo", "messages": [{"role": "user", "content": "m"}] * 1025},
        "invalid_value",
        "messages",
    ),
    case("ignore_eos off vLLM", chat_body(ignore_eos=True), "unsupported_parameter", "ignore_eos"),
    case("min_tokens off vLLM", chat_body(min_tokens=3), "unsupported_parameter", "min_tokens"),
    case(
        "repetition_penalty off vLLM",
        chat_body(repetition_penalty=1.2),
        "unsupported_parameter",
        "repetition_penalty",
    ),
    case("min_tokens < 0", chat_body(min_tokens=-1), "invalid_value", "min_tokens"),
    case("seed a word", chat_body(seed="x"), "invalid_type", "seed"),
    case("seed beyond int64", chat_body(seed=2**70), "invalid_value", "seed"),
    case("penalty > 2", chat_body(presence_penalty=3), "invalid_value", "presence_penalty"),
    case("stream a list", chat_body(stream=[1]), "invalid_type", "stream"),
    case(
        "stream_options without stream",
        chat_body(stream_options={"include_usage": True}),
        "invalid_value",
        "stream_options",
    ),
    case("unknown field", chat_body(foo=1), "unknown_parameter", "foo"),
    case("tools", chat_body(tools=[{"type": "function"}]), "invalid_value", "tools"),
    case(
        "json mode on a generator that cannot constrain decoding",
        chat_body(response_format={"type": "json_object"}),
        "unsupported_parameter",
        "response_format",
    ),
    case(
        "unknown response_format type",
        chat_body(response_format={"type": "xml"}),
        "invalid_value",
        "response_format.type",
    ),
    case("logprobs", chat_body(logprobs=True), "invalid_value", "logprobs"),
    case("logit_bias", chat_body(logit_bias={"1": 5}), "invalid_value", "logit_bias"),
    case("no prompt", {"model": "echo"}, "missing_required_parameter", "prompt", path=TEXT),
    case("no prompts", text_body([]), "invalid_value", "prompt", path=TEXT),
    case("token prompt", text_body([[1, 2, 3]]), "invalid_type", "prompt[0]", path=TEXT),
    case("too many generations", text_body(["p"] * 40, n=2), "invalid_value", "prompt", path=TEXT),
    case("suffix", text_body(suffix="end"), "invalid_value", "suffix", path=TEXT),
    case("best_of", text_body(best_of=3), "invalid_value", "best_of", path=TEXT),
    case("completion logprobs", text_body(logprobs=2), "invalid_value", "logprobs", path=TEXT),
    case(
        "unknown completion model",
        text_body(model="nope"),
        "model_not_found",
        "model",
        path=TEXT,
        status=404,
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "param"),
    CASES,
)
def test_bad_request(
    endpoint: Endpoint, path: str, body: Body, status: int, code: str, param: str | None
) -> None:
    with endpoint.client() as client:
        if isinstance(body, bytes):
            reply = client.post(path, content=body, headers={"Content-Type": "application/json"})
        else:
            reply = client.post(path, json=body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
    assert error["message"]


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", CHAT, 405, "method_not_allowed"),
        ("PUT", "/v1/models", 405, "method_not_allowed"),
        ("GET", "/v1/nothing", 404, "not_found"),
        ("GET", "/v1/models/nope", 404, "model_not_found"),
    ],
)
def test_bad_route(endpoint: Endpoint, method: str, path: str, status: int, code: str) -> None:
    with endpoint.client() as client:
        reply = client.request(method, path)
    assert reply.status_code == status
    assert reply.json()["error"]["code"] == code


JUNK: list[t.Any] = [None, -1, 0, 2**70, 1e308, -1e308, "", "x" * 300, [], [None], {}, True, 1.5]
CHAT_FIELDS = [
    "model", "messages", "temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens",
    "stop", "n", "seed", "presence_penalty", "frequency_penalty", "stream", "stream_options",
    "user", "logprobs", "tools", "tool_choice", "response_format", "metadata", "ignore_eos",
    "min_tokens", "repetition_penalty",
]  # fmt: skip
TEXT_FIELDS = ["prompt", "echo", "suffix", "best_of", "max_tokens", "stop", "n", "logprobs"]


def test_no_value_in_any_field_is_a_server_error(endpoint: Endpoint) -> None:
    """Every junk value in every field: a 4xx with an OpenAI error body, or a 200."""
    requests: list[tuple[str, dict[str, t.Any]]] = []
    for value in JUNK:
        requests += [(CHAT, {**chat_body(), field: value}) for field in CHAT_FIELDS]
        requests += [(TEXT, {**text_body(), field: value}) for field in TEXT_FIELDS]
        requests.append((CHAT, message(role="user", content=value)))
        requests.append((CHAT, message(role=value, content="hi")))
    with endpoint.client() as client:
        for path, body in requests:
            reply = client.post(path, content=json.dumps(body))
            assert reply.status_code < 500, (body, reply.text)
            if reply.status_code != 200:
                assert reply.json()["error"]["message"], (body, reply.text)
