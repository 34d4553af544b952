"""Token streaming over real HTTP with the official `openai` client, on `ticker`: a
registered provider whose stream yields 8 chunks 0.25 s apart, and on `relay`, a LiteLLM
generator in front of a streaming OpenAI stub. Chunks reach the client as the generator makes
them, and a client that hangs up stops the generation."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest

from tests.openai_stub import OpenAIStub
from tests.serve.support import Endpoint, chat_body

CHUNKS, DELAY = 8, 0.25


async def test_chunks_arrive_as_the_generator_makes_them(guarded: Endpoint) -> None:
    async with guarded.openai() as client:
        warm_up = await client.chat.completions.create(
            model="ticker", messages=[{"role": "user", "content": "warm up"}], stream=True
        )
        assert len([chunk async for chunk in warm_up]) > CHUNKS  # the first call sets up routes
        started = time.monotonic()
        stream = await client.chat.completions.create(
            model="ticker",
            messages=[{"role": "user", "content": "count"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        arrivals: list[tuple[float, str]] = []
        usage = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append((time.monotonic() - started, chunk.choices[0].delta.content))
            usage = chunk.usage or usage
        total = time.monotonic() - started
    assert [text for _, text in arrivals] == [f"tick{i} " for i in range(CHUNKS)]
    assert total >= CHUNKS * DELAY
    assert arrivals[0][0] < total / 2  # the first chunk came long before the last
    assert arrivals[-1][0] - arrivals[0][0] >= (CHUNKS - 2) * DELAY  # spread out, not batched
    assert usage is not None and usage.completion_tokens == CHUNKS


async def test_n_streams_interleave(guarded: Endpoint) -> None:
    async with guarded.async_client() as client:
        reply = await client.post(
            "/v1/chat/completions", json=chat_body(model="ticker", stream=True, n=2)
        )
    texts: dict[int, str] = {0: "", 1: ""}
    for line in reply.text.split("\n\n"):
        if line.startswith("data: {"):
            for choice in json.loads(line.removeprefix("data: "))["choices"]:
                texts[choice["index"]] += choice["delta"].get("content", "")
    assert texts == {i: "".join(f"tick{k} " for k in range(CHUNKS)) for i in (0, 1)}


async def hang_up_after_two_chunks(endpoint: Endpoint, stream_records: Path, name: str) -> None:
    """Stream `ticker` as `name`, leave after two chunks, and wait for the generator's record
    that its stream was stopped."""
    async with endpoint.openai() as client:
        stream = await client.chat.completions.create(
            model="ticker", messages=[{"role": "user", "content": name}], stream=True
        )
        seen = 0
        async for chunk in stream:
            seen += bool(chunk.choices and chunk.choices[0].delta.content)
            if seen == 2:
                break
        await stream.close()
    record = stream_records / name
    deadline = time.monotonic() + 20
    while not record.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert record.exists(), "the generator's stream was not stopped"


async def test_a_client_that_hangs_up_stops_the_generation(
    guarded: Endpoint, stream_records: Path
) -> None:
    await hang_up_after_two_chunks(guarded, stream_records, f"leaving-{uuid.uuid4().hex}")


@pytest.mark.parametrize("field", ["ignore_eos", "min_tokens", "repetition_penalty"])
def test_vllm_sampling_fields_are_refused_for_other_generators(
    guarded: Endpoint, field: str
) -> None:
    value = {"ignore_eos": True, "min_tokens": 2, "repetition_penalty": 1.1}[field]
    with guarded.client() as client:
        reply = client.post(
            "/v1/chat/completions", json=chat_body(model="ticker", **{field: value})
        )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", field)
    assert field in error["message"]


async def test_litellm_streams_through_the_endpoint(
    guarded: Endpoint, upstream: OpenAIStub
) -> None:
    async with guarded.openai() as client:
        await client.chat.completions.create(  # warm up: the replica imports litellm
            model="relay", messages=[{"role": "user", "content": "warm"}]
        )
        upstream.reset()
        started = time.monotonic()
        stream = await client.chat.completions.create(
            model="relay",
            messages=[{"role": "user", "content": "one two three four five"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        arrivals, text, usage = [], "", None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic() - started)
                text += chunk.choices[0].delta.content
            usage = chunk.usage or usage
        total = time.monotonic() - started
    assert text == "echo: one two three four five" and len(arrivals) == 6
    assert arrivals[0] < total / 2
    assert usage is not None and usage.completion_tokens == 6
    [request] = upstream.requests
    assert request.body["stream"] is True and request.api_key == "sk-up"
