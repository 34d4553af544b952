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
    status, headers, body = reply(http_errors.from_failure(error, model="m", request_id="r1"))
    assert (status, headers["retry-after"], body["code"]) == (503, "5", "unavailable")
    assert "model 'm'" in str(body["message"]) and "request id r1" in str(body["message"])


def test_anything_unexpected_is_a_500_with_a_request_id_and_nothing_of_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = KeyError("secret detail /models/private")
    status, _, body = reply(http_errors.from_failure(error, request_id="abc123"))
    assert (status, body["type"], body["code"]) == (500, "server_error", "internal_error")
    message = str(body["message"])
    assert "secret" not in message and "KeyError" not in message and "abc123" in message
    [record] = [r for r in caplog.records if "abc123" in r.getMessage()]
    assert "secret detail" in record.getMessage()  # the whole error is in the server log


LEAKY = "upstream http://10.0.0.1:8000/v1?key=sk-live /models/private"


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (InvalidMessageError({"role": LEAKY}, "bad role"), 400, "invalid_input"),
        (ValueError(LEAKY), 400, "invalid_input"),
        (GenerationError(LEAKY), 422, "generation_failed"),
        (RuntimeError(LEAKY), 422, "generation_failed"),
        (TimeoutError(LEAKY), 504, "generation_timeout"),
        (http_errors.CallFailed(RuntimeError(LEAKY)), 500, "generator_error"),
        (http_errors.CallFailed(NotImplementedError(LEAKY)), 400, "unsupported_endpoint"),
    ],
)
def test_item_failures_carry_a_code_and_request_id_but_no_error_text(
    error: BaseException, status: int, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    mapped = http_errors.item_error(error, request_id="rid-7", model="m")
    assert (mapped.status_code, mapped.code) == (status, code)
    assert "10.0.0.1" not in str(mapped) and "/models" not in str(mapped)
    if status >= 422 or code == "invalid_input":
        assert "rid-7" in str(mapped)
        [logged] = [r.getMessage() for r in caplog.records if "rid-7" in r.getMessage()]
        assert "/models/private" in logged and "10.0.0.1:8000/v1?key=***" in logged
        assert "sk-live" not in logged  # the whole error is logged, redacted


def test_a_request_error_of_the_generator_is_kept() -> None:
    own = ServeRequestError("own", status_code=418, code="teapot")
    assert http_errors.item_error(own, request_id="r", model="m") is own


def test_streamed_chat_events() -> None:
    results = [
        rr.GeneratedMessage(
            message=rr.Message(role="assistant", content=text),
            stop_reason=reason,
            usage=rr.Usage(input_tokens=5, output_tokens=2),
        )
        for text, reason in (("Hello", "stop"), ("", "length"))
    ]
    stream = streaming.EventStream("id-1", 7, "m", include_usage=True, n=2)
    events = [
        line
        for index, result in enumerate(results)
        for line in stream.events(index, rr.GeneratedChunk.whole(result))
    ] + stream.end()
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
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 4,
        "total_tokens": 9,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    assert {(c["id"], c["object"], c["model"]) for c in chunks} == {
        ("id-1", "chat.completion.chunk", "m")
    }
