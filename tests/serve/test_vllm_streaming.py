"""vLLM behind the endpoint, over real HTTP with the official `openai` client: tokens stream as
the engine makes them, a short request is not held behind a long one (each request goes to
the engine at once, which batches continuously), and vLLM's own sampling fields are taken.
Runs on the package's one vLLM app (`vllm_endpoint` in conftest.py): the embedded SmolLM2 on
vLLM's async engine (CPU here), eager, max_model_len 1024; one generator, so the default
one-deployment app (routes and engine in one replica)."""

from __future__ import annotations

import asyncio
import time
import typing as t

import pytest

from tests.serve.conftest import VLLM_APP, VLLM_GENERATOR, VLLM_MODEL
from tests.serve.support import KEY, TIMEOUT, Endpoint

pytestmark = [pytest.mark.engine, pytest.mark.slow]  # the vLLM app takes 80 s to start here

MODEL = VLLM_MODEL


async def stream(
    endpoint: Endpoint, content: str, max_tokens: int, **extra: t.Any
) -> tuple[list[float], str, float]:
    """Arrival times (from the start) of each content chunk, the text, and the end time."""
    import openai

    async with openai.AsyncOpenAI(
        base_url=endpoint.base_url, api_key=KEY, max_retries=0, timeout=TIMEOUT
    ) as client:
        started = time.monotonic()
        response = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": content}],
            max_tokens=max_tokens,
            stream=True,
            extra_body=extra or None,
        )
        arrivals, text = [], ""
        async for chunk in response:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic() - started)
                text += chunk.choices[0].delta.content
        return arrivals, text, time.monotonic() - started


async def test_a_streamed_reply_starts_early(vllm_endpoint: Endpoint) -> None:
    await stream(vllm_endpoint, "Hi", 4)  # warm up
    arrivals, text, total = await stream(
        vllm_endpoint, "Tell me a long story about the sea.", 96, ignore_eos=True
    )
    assert len(arrivals) >= 10 and text.strip()
    assert arrivals[0] < total / 2  # the first token came after prefill, not with the last


async def test_short_requests_are_not_held_behind_a_long_one(vllm_endpoint: Endpoint) -> None:
    long_request = asyncio.create_task(
        stream(vllm_endpoint, "Write a long essay about rivers.", 256, ignore_eos=True)
    )
    await asyncio.sleep(1.0)  # the long one is decoding
    started = time.monotonic()
    shorts = await asyncio.gather(
        *(stream(vllm_endpoint, f"Say {i}.", 8, ignore_eos=True) for i in range(4))
    )
    shorts_done = time.monotonic() - started
    long_arrivals, _, long_total = await long_request
    assert len(long_arrivals) >= 100
    assert all(len(arrivals) >= 4 for arrivals, _, _ in shorts)
    assert shorts_done + 1.0 < long_total / 2  # they finished while the long one ran on


def test_vllm_sampling_fields_are_taken(vllm_endpoint: Endpoint) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 12,
        "ignore_eos": True,
        "min_tokens": 12,
        "repetition_penalty": 1.1,
        "top_k": 5,
    }
    with vllm_endpoint.client() as client:
        reply = client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 12
    assert reply.json()["choices"][0]["finish_reason"] == "length"


def test_prompts_are_counted_against_max_model_len(vllm_endpoint: Endpoint) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello " * 1100}]}
    with vllm_endpoint.client() as client:
        too_long = client.post("/v1/chat/completions", json=body)
        with_completion = client.post(
            "/v1/chat/completions",
            json={
                **body,
                "messages": [{"role": "user", "content": "hello " * 900}],
                "max_tokens": 300,
            },
        )
        fine = client.post(
            "/v1/chat/completions",
            json={**body, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        )
    for reply in (too_long, with_completion):
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["code"] == "context_length_exceeded"
        assert "maximum context length is 1024 tokens" in error["message"]
    assert "300 in the completion" in with_completion.json()["error"]["message"]
    assert fine.status_code == 200


def test_the_replica_is_sized_as_vllm_serve_sizes_it(vllm_endpoint: Endpoint) -> None:
    """The replica's engine starts in vLLM's server context: its max_num_seqs is what vLLM's
    own config code gives `vllm serve` on the same arguments (no second engine)."""
    from ray import serve
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform

    import rig_ray as rr
    from rig_ray.embedded import resolve_model
    from rig_ray.generator import vllm_sizing
    from rig_ray.generator.vllm_engine_args import engine_kwargs
    from rig_ray.serve.served_model import deployment_name

    deployments = serve.status().applications[VLLM_APP].deployments
    assert list(deployments) == [deployment_name(MODEL)]  # one generator: one deployment
    handle = serve.get_deployment_handle(deployment_name(MODEL), app_name=VLLM_APP)
    got = handle.capacity.remote().result(timeout_s=TIMEOUT)
    generator = t.cast(rr.VLLMGenerator, rr.get_generator(VLLM_GENERATOR))
    path = resolve_model(generator.model)
    args = AsyncEngineArgs(model=path, **engine_kwargs(generator, path, current_platform.is_cpu()))
    server = args.create_engine_config(vllm_sizing.usage_context(vllm_sizing.SERVER))
    assert got == server.scheduler_config.max_num_seqs
    assert got == vllm_sizing.default_max_num_seqs({}, vllm_sizing.SERVER)
