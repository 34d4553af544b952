"""The bundled SmolLM2 on vLLM at dtype `auto` answers right: greedy, it knows Paris, as a chat
and as a completion with a stop string. Runs on the package's one vLLM app, whose engine
leaves dtype at `auto` (float32 on a CPU), over real HTTP with the official `openai` client."""

from __future__ import annotations

import pytest

from tests.serve.conftest import VLLM_MODEL
from tests.serve.support import KEY, TIMEOUT, Endpoint

pytestmark = [pytest.mark.engine, pytest.mark.slow]  # the vLLM app takes 80 s to start here


async def test_smollm2_on_vllm_at_auto_knows_the_capital_of_france(
    vllm_endpoint: Endpoint,
) -> None:
    import openai

    async with openai.AsyncOpenAI(
        base_url=vllm_endpoint.base_url, api_key=KEY, max_retries=0, timeout=TIMEOUT
    ) as client:
        chat = await client.chat.completions.create(
            model=VLLM_MODEL,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24,
        )
        completion = await client.completions.create(
            model=VLLM_MODEL, prompt="The capital of France is", max_tokens=8, stop=["."]
        )
    [answer] = chat.choices
    assert "Paris" in (answer.message.content or ""), answer.message.content
    assert answer.finish_reason == "stop"
    [continued] = completion.choices
    assert continued.text.strip() == "Paris", continued.text
    assert continued.finish_reason == "stop"
