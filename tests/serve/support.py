"""What the endpoint tests share: the API key, model names, clients and request bodies."""

from __future__ import annotations

import socket
import typing as t

import httpx
import openai

KEY = "test-key-123"
"""The API key of the test app."""
SMOL = "smollm2-135m"
"""The embedded model's served name."""
GUARD = "/guard"
"""The route prefix of the second test app (short timeouts, hanging and streaming fakes)."""
MAX_STOP = 2
"""The test app's cap on stop strings per request (16 by default)."""
TIMEOUT = 300.0
"""Seconds a request may take: the machine may be busy with other Ray tests."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Endpoint(t.NamedTuple):
    """The running test app, on 127.0.0.1:port."""

    port: int
    prefix: str = ""
    batch_storage: str | None = None
    """The app's `--batch-storage` folder, where a test looks into it."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def client(self, api_key: str | None = KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT)

    def async_client(self, connections: int = 100) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {KEY}"}
        limits = httpx.Limits(max_connections=connections)
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=TIMEOUT, limits=limits)

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.base_url, api_key=KEY, max_retries=0, timeout=TIMEOUT
        )


def chat_body(content: str = "hi", model: str = "echo", **fields: t.Any) -> dict[str, t.Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


def openai_error(reply: httpx.Response) -> dict[str, t.Any]:
    """The error of a refused request, checked to have OpenAI's shape."""
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, reply.text
    assert error["message"] and error["type"], reply.text
    return t.cast(dict[str, t.Any], error)
