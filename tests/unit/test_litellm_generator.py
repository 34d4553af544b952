"""LiteLLMGenerator against a real OpenAI-compatible HTTP server on 127.0.0.1 (no litellm mocks)."""

from __future__ import annotations

import asyncio
import collections.abc
import itertools
import time

import pytest

from rig_ray.generator.base import GeneratedMessage, GeneratedText
from rig_ray.generator.litellm_ import LiteLLMGenerator
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.registry import get_generator
from rig_ray.message import Message
from tests.openai_stub import OpenAIStub

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def stub() -> collections.abc.Iterator[OpenAIStub]:
    with OpenAIStub() as server:
        yield server


def _generator(stub: OpenAIStub, extra: str = "", *, api_key: str | None = "sk-test"):
    identifier = f"openai/stub-model,api_base={stub.base_url}"
    if api_key is not None:
        identifier += f",api_key={api_key}"
    generator = get_generator(identifier + extra)
    assert isinstance(generator, LiteLLMGenerator)
    return generator


def _chats(*contents: str) -> list[list[Message]]:
    return [[Message(role="user", content=content)] for content in contents]


def _no_params(count: int) -> list[GenerateParams]:
    return [GenerateParams()] * count


async def test_generate_messages_batch_in_order(stub: OpenAIStub) -> None:
    generator = _generator(stub, ",temperature=0.5,max_tokens=50,seed=7,stop=XX;YY")
    conversations = [
        [Message(role="system", content="be brief"), Message(role="user", content="one")],
        [Message(role="user", content="two words")],
        [
            Message(role="user", content="first"),
            Message(role="assistant", content="reply"),
            Message(role="user", content="three is last"),
        ],
    ]
    results = await generator.generate_messages(conversations, _no_params(3))

    assert len(results) == 3
    assert all(isinstance(r, GeneratedMessage) for r in results), results
    assert [r.text for r in results] == ["echo: one", "echo: two words", "echo: three is last"]
    assert all(r.message.role == "assistant" for r in results)
    assert all(r.stop_reason == "stop" for r in results)
    # Usage as the server counted it: words in all messages; words in the reply.
    assert [
        (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) for r in results
    ] == [
        (3, 2, 5),
        (2, 3, 5),
        (5, 4, 9),
    ]
    ids = [r.extra["id"] for r in results]
    assert all(isinstance(i, str) and i.startswith("chatcmpl-stub-") for i in ids)
    assert len(set(ids)) == 3
    assert all(r.extra["model"] == "stub-model" for r in results)

    requests = stub.requests
    assert len(requests) == 3
    assert {r.path for r in requests} == {"/v1/chat/completions"}
    assert {r.authorization for r in requests} == {"Bearer sk-test"}
    for request in requests:
        body = request.body
        assert body["model"] == "stub-model"
        assert body["temperature"] == 0.5
        assert body["max_tokens"] == 50
        assert body["seed"] == 7
        assert body["stop"] == ["XX", "YY"]
        assert "api_key" not in body and "api_base" not in body
    sent = sorted((r.body["messages"] for r in requests), key=len)
    assert sent[-1] == [m.to_openai() for m in conversations[2]]
    assert [m.to_openai() for m in conversations[0]] in sent


async def test_per_item_params_override_generator_params(stub: OpenAIStub) -> None:
    generator = _generator(stub, ",temperature=0.5,max_tokens=50")
    params = [GenerateParams(temperature=0.0), GenerateParams(max_tokens=9, seed=1)]
    results = await generator.generate_messages(_chats("a", "b"), params)
    assert [r.text for r in results] == ["echo: a", "echo: b"]
    bodies = {r.body["messages"][0]["content"]: r.body for r in stub.requests}
    assert (bodies["a"]["temperature"], bodies["a"]["max_tokens"]) == (0.0, 50)
    assert (bodies["b"]["temperature"], bodies["b"]["max_tokens"], bodies["b"]["seed"]) == (
        0.5,
        9,
        1,
    )
    assert "seed" not in bodies["a"]


async def test_generate_texts_uses_completions(stub: OpenAIStub) -> None:
    generator = _generator(stub, ",temperature=0.25,max_tokens=40,seed=3,stop=ZZ")
    results = await generator.generate_texts(["alpha", "beta gamma", "delta"], _no_params(3))

    assert all(isinstance(r, GeneratedText) for r in results), results
    assert [r.text for r in results] == ["echo: alpha", "echo: beta gamma", "echo: delta"]
    assert all(r.stop_reason == "stop" for r in results)
    assert [
        (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) for r in results
    ] == [
        (1, 2, 3),
        (2, 3, 5),
        (1, 2, 3),
    ]
    assert all(r.extra["id"].startswith("cmpl-stub-") for r in results)

    requests = stub.requests
    assert len(requests) == 3
    assert {r.path for r in requests} == {"/v1/completions"}
    assert {r.authorization for r in requests} == {"Bearer sk-test"}
    assert sorted(r.body["prompt"] for r in requests) == ["alpha", "beta gamma", "delta"]
    for request in requests:
        assert request.body["model"] == "stub-model"
        assert request.body["temperature"] == 0.25
        assert request.body["max_tokens"] == 40
        assert request.body["seed"] == 3
        assert request.body["stop"] == ["ZZ"]


async def test_errors_are_returned_in_place(stub: OpenAIStub) -> None:
    import litellm

    generator = _generator(stub)
    results = await generator.generate_messages(
        _chats("ok 1", "please FAIL", "ok 3"), _no_params(3)
    )

    assert isinstance(results[0], GeneratedMessage) and results[0].text == "echo: ok 1"
    assert isinstance(results[1], litellm.BadRequestError)
    assert results[1].status_code == 400
    assert "the stub refuses this request" in str(results[1])
    assert isinstance(results[2], GeneratedMessage) and results[2].text == "echo: ok 3"
    # A 400 is not retried.
    assert len(stub.requests) == 3

    texts = await generator.generate_texts(["ok", "FAIL", "ok"], _no_params(3))
    assert isinstance(texts[0], GeneratedText)
    assert isinstance(texts[1], litellm.BadRequestError)
    assert "the stub refuses this request" in str(texts[1])
    assert isinstance(texts[2], GeneratedText)


async def test_a_malformed_answer_fails_only_its_item(stub: OpenAIStub) -> None:
    generator = _generator(stub)
    results = await generator.generate_messages(_chats("ok", "EMPTY", "ok"), _no_params(3))
    assert isinstance(results[0], GeneratedMessage)
    assert isinstance(results[1], Exception)
    assert isinstance(results[2], GeneratedMessage)


async def test_unreachable_server_is_an_error_in_place() -> None:
    with OpenAIStub() as gone:
        generator = _generator(gone, ",timeout=5")
    # The stub has stopped: nothing listens on its port any more. (`extra` passes straight
    # through to litellm; no retries keeps this quick.)
    params = [GenerateParams(extra={"max_retries": 0})]
    results = await generator.generate_messages(_chats("ok"), params)
    assert len(results) == 1
    assert isinstance(results[0], Exception)


async def test_max_connections_caps_requests_in_flight(stub: OpenAIStub) -> None:
    generator = _generator(stub, ",max_connections=2")
    results = await generator.generate_messages(
        _chats(*[f"SLOW {i}" for i in range(6)]), _no_params(6)
    )
    assert [r.text for r in results] == [f"echo: SLOW {i}" for i in range(6)]
    assert 1 < stub.peak_in_flight <= 2


async def test_default_max_connections_runs_concurrently(stub: OpenAIStub) -> None:
    generator = _generator(stub)
    results = await generator.generate_messages(
        _chats(*[f"SLOW {i}" for i in range(6)]), _no_params(6)
    )
    assert all(isinstance(r, GeneratedMessage) for r in results), results
    assert stub.peak_in_flight >= 4  # the requests ran side by side, not one after another


async def test_min_delay_spaces_out_request_starts(stub: OpenAIStub) -> None:
    generator = _generator(stub, ",min_delay_between_requests=0.2")
    # Warm up this event loop's HTTP client, so connection set-up does not skew arrivals.
    await generator.generate_messages(_chats("warm up"), _no_params(1))
    stub.reset()

    results = await generator.generate_messages(_chats("a", "b", "c", "d"), _no_params(4))
    assert all(isinstance(r, GeneratedMessage) for r in results), results
    arrivals = sorted(r.arrived for r in stub.requests)
    assert len(arrivals) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # Starts are paced on the client; client-side overhead on a busy machine shifts single
    # arrivals by a tenth of a second, so the span is the firm check, each gap a loose one.
    assert arrivals[-1] - arrivals[0] >= 3 * 0.18, gaps
    assert all(gap >= 0.05 for gap in gaps), gaps
    assert arrivals[-1] - arrivals[0] < 3.0


async def test_max_tokens_truncates_with_length_stop_reason(stub: OpenAIStub) -> None:
    generator = _generator(stub)
    long = "one two three four five six"
    [message] = await generator.generate_messages(_chats(long), [GenerateParams(max_tokens=3)])
    assert message.stop_reason == "length"
    assert message.text == "echo: one two"
    assert message.usage.output_tokens == 3

    [text] = await generator.generate_texts([long], [GenerateParams(max_tokens=2)])
    assert text.stop_reason == "length"
    assert text.text == "echo: one"

    # Enough tokens: the reply is whole and ends normally.
    [whole] = await generator.generate_messages(_chats(long), [GenerateParams(max_tokens=50)])
    assert (whole.stop_reason, whole.text) == ("stop", f"echo: {long}")


async def test_stop_string_ends_reply(stub: OpenAIStub) -> None:
    generator = _generator(stub)
    [message] = await generator.generate_messages(
        _chats("keep this END drop this"), [GenerateParams(stop=["END"])]
    )
    assert message.stop_reason == "stop"
    assert message.text == "echo: keep this "


def test_same_generator_across_event_loops(stub: OpenAIStub) -> None:
    generator = _generator(stub, ",max_connections=2,min_delay_between_requests=0.01")

    async def run(tag: str) -> list[str]:
        results = await generator.generate_messages(_chats(f"{tag} 1", f"{tag} 2"), _no_params(2))
        texts = await generator.generate_texts([f"{tag} 3"], _no_params(1))
        return [r.text for r in [*results, *texts]]

    assert asyncio.run(run("first")) == ["echo: first 1", "echo: first 2", "echo: first 3"]
    assert asyncio.run(run("second")) == ["echo: second 1", "echo: second 2", "echo: second 3"]
    assert len(stub.requests) == 6


async def test_api_key_from_environment(stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    generator = _generator(stub, api_key=None)
    assert generator.api_key is None
    [result] = await generator.generate_messages(_chats("hello"), _no_params(1))
    assert isinstance(result, GeneratedMessage), result
    assert [r.authorization for r in stub.requests] == ["Bearer sk-from-env"]


async def test_identifier_api_key_wins_over_environment(
    stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    generator = _generator(stub, api_key="sk-explicit")
    [result] = await generator.generate_texts(["hello"], _no_params(1))
    assert isinstance(result, GeneratedText), result
    assert [r.authorization for r in stub.requests] == ["Bearer sk-explicit"]
    assert "sk-explicit" not in generator.to_identifier()


def test_stub_speaks_openai_to_the_openai_client() -> None:
    """The stub itself, checked with the official client (independent of litellm)."""
    openai = pytest.importorskip("openai")
    with OpenAIStub() as stub:
        client = openai.OpenAI(base_url=stub.base_url, api_key="sk-direct", max_retries=0)
        chat = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi you"}], max_tokens=2
        )
        assert chat.choices[0].message.content == "echo: hi"
        assert chat.choices[0].finish_reason == "length"
        assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (2, 2)
        completion = client.completions.create(model="m", prompt="there")
        assert completion.choices[0].text == "echo: there"
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model="m", prompt="FAIL now")
        assert caught.value.body["type"] == "invalid_request_error"
        assert caught.value.body["code"] == "stub_fail"
        client.close()
        assert [r.api_key for r in stub.requests] == ["sk-direct"] * 3
        assert stub.peak_in_flight == 1


def test_sync_generate_in_a_script_leaves_no_open_sessions(stub: OpenAIStub) -> None:
    """Each sync `generate` runs its own event loop; no HTTP session may outlive it."""
    import subprocess
    import sys

    script = (
        "import rig_ray as rr\n"
        f"g = rr.get_generator('openai/stub-model,api_base={stub.base_url},api_key=sk-test')\n"
        "for _ in range(3):\n"
        "    print(g.generate(['hello', 'world'], 2)[1][1].text)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["echo: world"] * 3
    assert "Unclosed" not in done.stderr, done.stderr


# -- streaming ---------------------------------------------------------------------------------


def test_remote_apis_batch_continuously_and_count_no_tokens(stub: OpenAIStub) -> None:
    generator = _generator(stub)
    assert LiteLLMGenerator.batches_continuously
    assert asyncio.run(generator.context_window()) is None
    assert asyncio.run(generator.count_prompt_tokens("some text")) is None


async def test_stream_message_yields_chunks_as_they_arrive() -> None:
    with OpenAIStub(stream_delay=0.2) as stub:
        generator = _generator(stub, ",max_tokens=50")
        messages = [Message(role="user", content="one two three four")]
        started = time.monotonic()
        arrivals = []
        chunks = []
        async for chunk in generator.stream_message(messages):
            arrivals.append(time.monotonic() - started)
            chunks.append(chunk)
    texts = [chunk.text for chunk in chunks if chunk.text]
    assert "".join(texts) == "echo: one two three four" and len(texts) == 5
    assert arrivals[0] < arrivals[-1] / 2  # the first came long before the last
    last = chunks[-1]
    assert last.stop_reason == "stop" and last.text == ""
    assert last.usage is not None and last.usage.output_tokens == 5
    assert all(chunk.stop_reason is None for chunk in chunks[:-1])
    [request] = stub.requests
    assert request.body["stream"] is True and request.body["max_tokens"] == 50
    assert request.authorization == "Bearer sk-test"


async def test_stream_text_and_its_stop_reason() -> None:
    with OpenAIStub() as stub:
        generator = _generator(stub)
        chunks = [c async for c in generator.stream_text("a b c d", GenerateParams(max_tokens=2))]
    assert "".join(chunk.text for chunk in chunks) == "echo: a"
    assert chunks[-1].stop_reason == "length"
    assert stub.requests[0].path == "/v1/completions"


async def test_closing_a_stream_early_hangs_up_on_the_server() -> None:
    with OpenAIStub(stream_delay=0.2) as stub:
        generator = _generator(stub)
        stream = generator.stream_message([Message(role="user", content="w " * 40)])
        first = await anext(stream)
        await stream.aclose()
        deadline = time.monotonic() + 10
        while stub.streams_aborted == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    assert first.text == "echo:"
    assert stub.streams_aborted == 1


async def test_a_refused_stream_raises() -> None:
    import litellm

    with OpenAIStub() as stub:
        generator = _generator(stub)
        with pytest.raises(litellm.BadRequestError):
            async for _ in generator.stream_message([Message(role="user", content="FAIL")]):
                pass
