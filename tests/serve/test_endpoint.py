"""The OpenAI-compatible endpoint over real HTTP on 127.0.0.1: the official `openai` client and
rig_ray's own LiteLLMGenerator against the embedded SmolLM2 (transformers), concurrent requests
batched, bad requests, auth and overload on fake generators, all in one Serve app."""

from __future__ import annotations

import asyncio
import json
import typing as t

import openai
import pytest

import rig_ray as rr
from rig_ray.serve import APP_NAME, deployment_name
from tests.serve.support import KEY, SMOL, Endpoint, chat_body

pytestmark = pytest.mark.engine


async def batch_stats(model: str) -> dict[str, t.Any]:
    from ray import serve

    handle = serve.get_deployment_handle(deployment_name(model), app_name=APP_NAME)
    return t.cast(dict[str, t.Any], await handle.stats.remote())


# -- the official openai client on the real model -------------------------------------------


async def test_openai_chat(endpoint: Endpoint) -> None:
    async with endpoint.openai() as client:
        reply = await client.chat.completions.create(
            model=SMOL,
            messages=[
                {"role": "system", "content": "You answer in one word."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
            max_tokens=8,
            temperature=0,
        )
    assert reply.object == "chat.completion" and reply.model == SMOL
    [choice] = reply.choices
    assert choice.message.role == "assistant" and "Paris" in (choice.message.content or "")
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 10 and 0 < reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_openai_streaming_chat(endpoint: Endpoint) -> None:
    async with endpoint.openai() as client:
        stream = await client.chat.completions.create(
            model=SMOL,
            messages=[{"role": "user", "content": "Name a colour."}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=6,
        )
        chunks = [chunk async for chunk in stream]
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk.id for chunk in chunks}) == 1
    choices = [chunk.choices[0] for chunk in chunks if chunk.choices]
    assert choices[0].delta.role == "assistant"
    text = "".join(choice.delta.content or "" for choice in choices)
    assert text.strip()
    assert [c.finish_reason for c in choices][-1] == "length"  # 6 tokens cannot finish a reply
    assert all(c.finish_reason is None for c in choices[:-1])
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None and usage.completion_tokens == 6


async def test_openai_completions_with_prompts_and_n(endpoint: Endpoint) -> None:
    prompts = ["The capital of France is", "One, two, three,"]
    async with endpoint.openai() as client:
        reply = await client.completions.create(
            model=SMOL, prompt=prompts, n=2, max_tokens=5, temperature=0
        )
    assert reply.object == "text_completion"
    assert [choice.index for choice in reply.choices] == [0, 1, 2, 3]
    texts = [choice.text for choice in reply.choices]
    assert texts[0] == texts[1] and texts[2] == texts[3]  # greedy: n copies agree
    assert texts[0] != texts[2] and all(texts)
    assert reply.usage is not None and reply.usage.completion_tokens <= 20
    assert reply.usage.prompt_tokens >= 2 * 4  # each prompt counted once


async def test_openai_model_list(endpoint: Endpoint) -> None:
    async with endpoint.openai() as client:
        models = [model.id async for model in client.models.list()]
        one = await client.models.retrieve(SMOL)
        with pytest.raises(openai.NotFoundError) as missing:
            await client.models.retrieve("no-such-model")
    assert models == [SMOL, "echo", "params", "chat-only", "slow"]
    assert one.id == SMOL and one.object == "model"
    assert missing.value.code == "model_not_found"


async def test_openai_client_reads_error_bodies(endpoint: Endpoint) -> None:
    async with endpoint.openai() as client:
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.chat.completions.create(
                model="gpt-9", messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(
                model=SMOL, messages=[{"role": "user", "content": "hi"}], temperature=5
            )
    assert unknown.value.code == "model_not_found" and "gpt-9" in unknown.value.message
    assert bad.value.code == "invalid_value" and bad.value.param == "temperature"


# -- rig_ray's LiteLLM generator against the endpoint ----------------------------------------


async def test_litellm_generator_against_the_endpoint(endpoint: Endpoint) -> None:
    generator = rr.get_generator(
        f"openai/{SMOL},api_base={endpoint.base_url},api_key={KEY},max_tokens=8,temperature=0"
    )
    chat = await generator.chat("What is the capital of France?").run()
    assert chat.last.role == "assistant" and "Paris" in chat.last.content
    assert chat.stop_reason in ("stop", "length")
    assert chat.usage is not None and 0 < chat.usage.output_tokens <= 8
    [text] = await generator.generate_texts(["The capital of France is"], [rr.GenerateParams()])
    assert isinstance(text, rr.GeneratedText) and text.text.strip()
    assert text.usage is not None and 0 < text.usage.output_tokens <= 8


# -- batching --------------------------------------------------------------------------------


async def test_32_concurrent_requests_share_engine_calls(endpoint: Endpoint) -> None:
    before = await batch_stats(SMOL)
    async with endpoint.openai() as client:
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model=SMOL,
                    messages=[{"role": "user", "content": f"Say the number {i}."}],
                    max_tokens=4,
                )
                for i in range(32)
            )
        )
    assert len(replies) == 32
    assert all(reply.choices[0].message.content for reply in replies)
    after = await batch_stats(SMOL)
    sizes = after["recent"][len(before["recent"]) :]
    assert sum(sizes) == 32
    assert max(sizes) > 1 and len(sizes) < 32  # the engine saw batches larger than one


async def test_n_choices_are_items_of_one_batch(endpoint: Endpoint) -> None:
    before = await batch_stats("echo")
    with endpoint.client() as client:
        reply = client.post("/v1/chat/completions", json=chat_body("again", n=3)).json()
    assert [c["message"]["content"] for c in reply["choices"]] == ["again"] * 3
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2]
    # the fake counts words: the prompt once, each choice's reply
    assert reply["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 3,
        "total_tokens": 4,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    after = await batch_stats("echo")
    assert after["recent"][len(before["recent"]) :] == [3]


# -- params, per-item failures, unsupported endpoints ----------------------------------------


def test_request_params_reach_the_generator(endpoint: Endpoint) -> None:
    sent = {
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 5,
        "max_tokens": 7,
        "stop": ["x", "y"],
        "seed": 3,
        "presence_penalty": 0.1,
        "frequency_penalty": -0.1,
    }
    with endpoint.client() as client:
        chat = client.post("/v1/chat/completions", json=chat_body(model="params", **sent))
        newer = client.post(
            "/v1/chat/completions",
            json=chat_body(model="params", max_tokens=7, max_completion_tokens=9, stop="z"),
        )
        text = client.post("/v1/completions", json={"model": "params", "prompt": "p", **sent})
    assert json.loads(chat.json()["choices"][0]["message"]["content"]) == sent
    assert json.loads(newer.json()["choices"][0]["message"]["content"]) == {
        "max_tokens": 9,
        "stop": ["z"],
    }
    assert json.loads(text.json()["choices"][0]["text"]) == sent


async def test_a_failed_item_fails_only_its_request(endpoint: Endpoint) -> None:
    async with endpoint.async_client() as client:
        ok_1, failed, ok_2 = await asyncio.gather(
            *(
                client.post("/v1/chat/completions", json=chat_body(content))
                for content in ("first", "please FAIL", "second")
            )
        )
    assert (ok_1.status_code, failed.status_code, ok_2.status_code) == (200, 422, 200)
    assert ok_2.json()["choices"][0]["message"]["content"] == "second"
    error = failed.json()["error"]
    assert error["code"] == "generation_failed" and "FAIL" not in error["message"]
    assert failed.headers["x-request-id"] in error["message"]


def test_echo_and_streamed_completions(endpoint: Endpoint) -> None:
    body = {"model": "echo", "prompt": ["a", "b"], "echo": True, "stream": True}
    with endpoint.client() as client:
        reply = client.post("/v1/completions", json=body)
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in reply.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    texts = {
        c["choices"][0]["index"]: c["choices"][0]["text"] for c in chunks if c["choices"][0]["text"]
    }
    assert texts == {0: "aa", 1: "bb"}  # echoed prompt + the echo generator's reply
    assert [c["choices"][0]["finish_reason"] for c in chunks].count("stop") == 2


def test_chat_only_generator_refuses_completions(endpoint: Endpoint) -> None:
    with endpoint.client() as client:
        chat = client.post("/v1/chat/completions", json=chat_body(model="chat-only"))
        text = client.post("/v1/completions", json={"model": "chat-only", "prompt": "hi"})
    assert chat.status_code == 200
    assert text.status_code == 400 and text.json()["error"]["code"] == "unsupported_endpoint"


# -- overload and auth -----------------------------------------------------------------------


async def test_overload_is_503_with_retry_after(endpoint: Endpoint) -> None:
    async with endpoint.async_client() as client:
        replies = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=chat_body(model="slow")) for _ in range(8))
        )
    statuses = sorted(reply.status_code for reply in replies)
    assert set(statuses) == {200, 503}  # Serve may turn away more than the queue holds
    for reply in replies:
        if reply.status_code == 503:
            assert reply.headers["Retry-After"] == "1"
            assert reply.json()["error"]["code"] == "overloaded"


@pytest.mark.parametrize(
    ("method", "path", "key", "status"),
    [
        ("GET", "/health", None, 200),
        ("GET", "/health", "wrong", 200),
        ("GET", "/v1/models", None, 401),
        ("GET", "/v1/models", "wrong", 401),
        ("GET", "/v1/models", KEY, 200),
        ("POST", "/v1/chat/completions", None, 401),
        ("POST", "/v1/chat/completions", "wrong", 401),
        ("POST", "/v1/chat/completions", KEY, 200),
        ("POST", "/v1/completions", "wrong", 401),
        ("GET", "/no-such-route", None, 401),
        ("GET", "/no-such-route", KEY, 404),
    ],
)
def test_bearer_auth(
    endpoint: Endpoint, method: str, path: str, key: str | None, status: int
) -> None:
    body = chat_body() if path == "/v1/chat/completions" else {"model": "echo", "prompt": "x"}
    with endpoint.client(api_key=key) as client:
        reply = client.request(method, path, json=body if method == "POST" else None)
    assert reply.status_code == status
    if status == 401:
        assert reply.json()["error"]["code"] == "invalid_api_key"
        assert reply.headers["WWW-Authenticate"] == "Bearer"


def test_malformed_authorization_headers(endpoint: Endpoint) -> None:
    with endpoint.client(api_key=None) as client:
        for header in ("Basic abc", "Bearer", "Token x", KEY, f"bearer {KEY}"):
            reply = client.get("/v1/models", headers={"Authorization": header})
            assert reply.status_code == (200 if header == f"bearer {KEY}" else 401), header
