"""One line of an OpenAI batch file as a prepared row: its body read and checked by the
endpoint's own request models and caps (`rig_ray.serve.wire`, `rig_ray.serve.limits`), or the
`InvalidLine` saying why it cannot run."""

from __future__ import annotations

import json
import typing as t

from pydantic import BaseModel, ConfigDict, ValidationError

from rig_ray.errors import ServeRequestError
from rig_ray.redaction import redact
from rig_ray.serve import wire
from rig_ray.serve.limits import RequestLimits, check_request

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
URLS = (CHAT_URL, COMPLETIONS_URL)
"""The endpoints a batch file's lines may name."""
MESSAGES_COLUMN = "messages"
PARAMS_COLUMN = "params"
TEXT_COLUMN = "prompt"
N_COLUMN = "n"
"""Each line's `n`: the job makes that many generations of it (`generations_column`)."""


class InvalidLine(BaseModel):
    """A line that cannot run: its 1-based number, its custom_id if it had one, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    line: int
    custom_id: str | None
    code: str
    message: str
    param: str | None = None


class NotJson(t.NamedTuple):
    why: str


def prepared_row(
    number: int,
    line: t.Any,
    vllm_fields: bool | t.Mapping[str, bool],
    urls: tuple[str, ...],
    limits: RequestLimits,
) -> dict[str, t.Any] | InvalidLine:
    """The prepared row of one line, or why it cannot run."""

    def bad(message: str, code: str = "invalid_request", param: str | None = None) -> InvalidLine:
        return InvalidLine(
            line=number, custom_id=custom_id, code=code, message=redact(message), param=param
        )

    custom_id: str | None = None
    if isinstance(line, NotJson):
        return bad(f"line {number}: {line.why}", code="invalid_json_line")
    if not isinstance(line, dict):
        return bad(f"line {number}: a {type(line).__name__}, not an object", "invalid_json_line")
    refused = _refused_json({key: value for key, value in line.items() if key != "body"})
    if refused is not None:  # before its custom_id is taken: it may be the string refused
        return bad(f"line {number}: {refused}", "invalid_json_line")
    if isinstance(line.get("custom_id"), str | int) and str(line["custom_id"]):
        custom_id = str(line["custom_id"])
    else:
        return bad(f"line {number}: custom_id: a non-empty string is required", param="custom_id")
    unknown = sorted(set(line) - {"custom_id", "method", "url", "body"})
    if unknown:
        return bad(f"line {number}: unknown key {unknown[0]!r}", param=unknown[0])
    if line.get("method", "POST") != "POST":
        return bad(f"line {number}: method: only POST is supported", param="method")
    url = line.get("url")
    if url not in urls:
        return bad(
            f"line {number}: url {url!r} is not one this batch runs ({', '.join(urls)})",
            code="invalid_url",
            param="url",
        )
    body = line.get("body")
    if isinstance(body, str):  # a body sent as a JSON string
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            return bad(f"line {number}: body: a JSON object is required", param="body")
    if not isinstance(body, dict):
        return bad(f"line {number}: body: an object is required", param="body")
    refused = _refused_json(body)
    if refused is not None:
        return bad(f"line {number}: body: {refused}", "invalid_json", "body")
    try:
        request = _request(body, chat=url == CHAT_URL)
        params = request.to_params()
        _check(request, params, _takes_vllm_fields(request.model, vllm_fields), limits)
    except _Refused as error:
        return bad(f"line {number}: {error.message}", error.code, error.param)
    row = {
        "id": custom_id,
        "line": number,
        "url": url,
        "request_model": request.model,
        N_COLUMN: request.n,
        PARAMS_COLUMN: params.model_dump_json(exclude_none=True, exclude_defaults=True),
    }
    if isinstance(request, wire.CompletionRequest):
        return {**row, TEXT_COLUMN: request.prompts[0], "echo": request.echo}
    messages = [
        {"role": m.role, "content": m.content, "name": m.name, "tool_call_id": m.tool_call_id}
        for m in request.to_messages()
    ]
    return {**row, MESSAGES_COLUMN: messages}


def _refused_json(value: t.Any) -> ServeRequestError | None:
    """Why the endpoint would refuse `value` as JSON (nested too deeply, or a string with a
    lone surrogate, which no UTF-8 file can hold), or None."""
    from rig_ray.serve.http_errors import check_tree

    try:
        check_tree(value)
    except ServeRequestError as refused:
        return refused
    return None


class _Refused(Exception):
    def __init__(self, message: str, code: str, param: str | None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


def _request(
    body: dict[str, t.Any], *, chat: bool
) -> wire.ChatCompletionRequest | wire.CompletionRequest:
    """The body read by the endpoint's own request model; `_Refused` as the endpoint's 400."""
    try:
        if chat:
            return wire.ChatCompletionRequest.model_validate(body)
        return wire.CompletionRequest.model_validate(body)
    except ValidationError as error:
        from rig_ray.serve.http_errors import from_validation

        refused = from_validation(error)
        raise _Refused(str(refused), refused.code or "invalid_value", refused.param) from None


def _check(
    request: wire.ChatCompletionRequest | wire.CompletionRequest,
    params: t.Any,
    vllm_fields: bool,
    limits: RequestLimits,
) -> None:
    """What the endpoint refuses before a request reaches a model, as it words it: its caps
    on messages, stop strings and `n` included."""
    if isinstance(request, wire.CompletionRequest) and len(request.prompts) != 1:
        raise _Refused("prompt: one prompt per batch line", "invalid_value", "prompt")
    try:
        check_request(request, limits)
    except ServeRequestError as refused:
        raise _Refused(str(refused), refused.code or "invalid_value", refused.param) from None
    if request.stream:
        raise _Refused("stream: not supported in a batch file", "unsupported_parameter", "stream")
    for name in wire.VLLM_FIELDS:
        if name in params.extra and not vllm_fields:
            raise _Refused(
                f"{name}: only vLLM generators take it, and the generator of this line is not one",
                "unsupported_parameter",
                name,
            )


def _takes_vllm_fields(model: str, vllm_fields: bool | t.Mapping[str, bool]) -> bool:
    """Whether the generator `model` names takes vLLM's fields; `_Refused` as the endpoint's
    404 when `vllm_fields` names the served models and `model` is none of them."""
    if isinstance(vllm_fields, bool):
        return vllm_fields
    if model not in vllm_fields:
        served = ", ".join(vllm_fields)
        raise _Refused(
            f"The model {model!r} does not exist (served: {served}).", "model_not_found", "model"
        )
    return vllm_fields[model]
