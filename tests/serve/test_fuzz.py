"""A fuzz test of the endpoint: random and hostile request bodies to /v1/chat/completions and
/v1/completions get a 4xx with an OpenAI error body (or a 200 when they happen to be valid),
never a 5xx, and the endpoint still answers a normal request afterwards.

Bodies: the fields of both endpoints (and unknown ones) set to random JSON of every type
(huge integers, NaN and infinities, unicode with lone surrogates, nesting), huge `n` and
`max_tokens`, messages of random shape, JSON nested thousands deep, invalid UTF-8, and raw
bytes. Runs on a fake (echo) app, so only the endpoint's own code is under test."""

from __future__ import annotations

import json
import typing as t

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve.support import Endpoint, openai_error

CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
EXAMPLES, SLOW_EXAMPLES = 150, 1000

FIELDS = [
    "model", "messages", "prompt", "temperature", "top_p", "top_k", "max_tokens",
    "max_completion_tokens", "stop", "n", "seed", "presence_penalty", "frequency_penalty",
    "stream", "stream_options", "user", "logit_bias", "logprobs", "tools", "tool_choice",
    "response_format", "metadata", "ignore_eos", "min_tokens", "repetition_penalty", "echo",
    "suffix", "best_of", "store", "service_tier", "modalities", "top_logprobs",
]  # fmt: skip

huge_ints = st.sampled_from([2**31, 2**53 + 1, 2**63, 2**64, 10**30, -(10**30), 10**400])
numbers = st.one_of(
    st.integers(-(2**70), 2**70), huge_ints, st.floats(allow_nan=True, allow_infinity=True)
)
lone_surrogates = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
texts = st.lists(st.characters() | lone_surrogates, max_size=40).map("".join)
"""Any code point, lone surrogates (which UTF-8 cannot hold) often among them."""
leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
messages = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]) | values},
            optional={"content": texts | values, "name": values, "tool_calls": values},
        ),
        values,
    ),
    max_size=3,
)


def base(path: str) -> dict[str, t.Any]:
    if path == CHAT:
        return {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    return {"model": "echo", "prompt": "hi"}


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """A path and the raw bytes of a body: mostly a valid request with some fields changed."""
    path = draw(st.sampled_from([CHAT, TEXT]))
    kind = draw(st.sampled_from(["fields", "fields", "unicode", "deep", "raw", "any json"]))
    if kind == "raw":
        return path, draw(st.binary(max_size=200))
    if kind == "any json":
        return path, json.dumps(draw(values)).encode()
    body = base(path)
    if kind == "unicode":  # the text a model is asked to answer
        text = draw(texts)
        body.update({"messages": [{"role": "user", "content": text}], "prompt": text})
        body.pop("prompt" if path == CHAT else "messages")
    if kind == "deep":
        depth = draw(st.sampled_from([65, 500, 5_000, 200_000]))
        field = draw(st.sampled_from(["messages", "metadata", "stop", "prompt", "x"]))
        nested = "[" * depth + "]" * depth
        raw = json.dumps({k: v for k, v in body.items() if k != field})
        return path, f'{raw[:-1]}, "{field}": {nested}}}'.encode()
    changes = draw(st.dictionaries(st.sampled_from(FIELDS) | texts, values, max_size=4))
    if kind == "unicode":
        changes = {}
    body.update(changes)
    if draw(st.booleans()):
        body["messages"] = draw(messages)
    if draw(st.booleans()):
        big = st.integers(1, 10**20) | huge_ints
        body.update(draw(st.dictionaries(st.sampled_from(["n", "max_tokens", "best_of"]), big)))
    raw_text = json.dumps(body, ensure_ascii=draw(st.booleans()))  # NaN, Infinity as JS does
    encoded = raw_text.encode("utf-8", errors="surrogatepass")  # invalid UTF-8 for surrogates
    if draw(st.booleans()):  # a stray invalid byte inside a string
        at = encoded.find(b'"hi"')
        if at >= 0:
            encoded = encoded[: at + 1] + b"\xff\xc3" + encoded[at + 1 :]
    return path, encoded


def check_reply(client: t.Any, path: str, raw: bytes) -> int:
    """Send one body; any status under 500, and an OpenAI error body with every refusal."""
    reply = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert reply.status_code < 500, (raw[:300], reply.status_code, reply.text[:300])
    if reply.status_code != 200:
        assert openai_error(reply)["type"] == "invalid_request_error", reply.text
    return int(reply.status_code)


def fuzz(endpoint: Endpoint, max_examples: int) -> dict[int, int]:
    """Run the fuzz test; the count of replies by status."""
    statuses: dict[int, int] = {}
    with endpoint.client() as client:

        @settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(bodies())
        def one(case: tuple[str, bytes]) -> None:
            status = check_reply(client, *case)
            statuses[status] = statuses.get(status, 0) + 1

        one()
        normal = client.post(CHAT, json=base(CHAT))
    assert normal.status_code == 200, normal.text
    assert normal.json()["choices"][0]["message"]["content"] == "hi"
    print(f"\nendpoint fuzz: {sum(statuses.values())} bodies, replies by status {statuses}")
    return statuses


def test_random_and_hostile_bodies_get_4xx_never_5xx(echo_app: Endpoint) -> None:
    statuses = fuzz(echo_app, EXAMPLES)
    assert sum(statuses.values()) >= EXAMPLES // 2 and any(400 <= s < 500 for s in statuses)


@pytest.mark.slow
def test_random_and_hostile_bodies_get_4xx_never_5xx_explored_longer(echo_app: Endpoint) -> None:
    fuzz(echo_app, SLOW_EXAMPLES)
