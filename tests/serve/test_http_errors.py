"""What each failure becomes on the wire, and the shape of streamed replies (pure logic)."""

from __future__ import annotations

import json

import pytest

import rig_ray as rr
from rig_ray.errors import GenerationError, InvalidMessageError, ServeRequestError
from rig_ray.serve import http_errors, streaming


def reply(error: ServeRequestError) -> tuple[int, dict[str, str], dict[str, str | None]]:
    response = http_errors.error_response(error)
    return response.status_code, dict(response.headers), json.loads(response.body)["error"]


def test_overload_from_serve_keeps_its_status_and_rounds_retry_after_up() -> None:
    from ray.serve.exceptions import BackPressureError

    status, headers, body = reply(http_errors.from_failure(BackPressureError(9, 8, 429, 2.5)))
    assert (status, headers["retry-after"]) == (429, "3")
    assert (body["type"], body["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    status, headers, body = reply(http_errors.from_failure(BackPressureError(9, 8)))
    assert (status, headers["retry-after"], body["code"]) == (503, "1", "overloaded")


def test_a_deployment_that_is_gone_is_503() -> None:
    from ray.serve._private.common import DeploymentID
    from ray.serve.exceptions import DeploymentUnavailableError

    error = DeploymentUnavailableError(DeploymentID(name="m", app_name="a"))
    status, headers, body = reply(http_errors.from_failure(error, model="m"))
    assert (status, headers["retry-after"], body["code"]) == (503, "5", "unavailable")
    assert "model 'm'" in str(body["message"])


def test_anything_unexpected_is_a_500_that_names_only_the_type() -> None:
    status, _, body = reply(http_errors.from_failure(KeyError("secret detail")))
    assert (status, body["type"], body["code"]) == (500, "server_error", "internal_error")
    assert "secret detail" not in str(body["message"]) and "KeyError" in str(body["message"])


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (InvalidMessageError({"role": "x"}, "bad role"), 400, "invalid_input"),
        (ValueError("prompt too long"), 400, "invalid_input"),
        (GenerationError("refused"), 422, "generation_failed"),
        (RuntimeError("CUDA error"), 422, "generation_failed"),
        (TimeoutError("slow"), 504, "generation_timeout"),
        (ServeRequestError("own", status_code=418, code="teapot"), 418, "teapot"),
    ],
)
def test_item_failures(error: BaseException, status: int, code: str) -> None:
    mapped = http_errors.from_item_failure(error)
    assert (mapped.status_code, mapped.code) == (status, code)


def test_streamed_chat_events() -> None:
    results = [
        rr.GeneratedMessage(
            message=rr.Message(role="assistant", content=text),
            stop_reason=reason,
            usage=rr.Usage(input_tokens=5, output_tokens=2),
        )
        for text, reason in (("Hello", "stop"), ("", "length"))
    ]
    events = streaming.chat_events("id-1", 7, "m", results, include_usage=True)
    assert events[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    deltas = [(c["choices"][0]["index"], c["choices"][0]["delta"]) for c in chunks[:-1]]
    assert deltas == [
        (0, {"role": "assistant", "content": ""}),
        (0, {"content": "Hello"}),
        (0, {}),
        (1, {"role": "assistant", "content": ""}),  # an empty reply has no content chunk
        (1, {}),
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [
        None, None, "stop", None, "length",
    ]  # fmt: skip
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    assert {(c["id"], c["object"], c["model"]) for c in chunks} == {
        ("id-1", "chat.completion.chunk", "m")
    }
