"""Failures as OpenAI error bodies (`{"error": {"message", "type", "param", "code"}}`): which
status each failure gets, and the FastAPI handlers that make sure every reply has that shape."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import re
import typing as t

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from rig_ray.errors import ServeRequestError
from rig_ray.redaction import error_text, redact

logger = logging.getLogger("ray.serve")  # so it lands in the replica's log

_TYPES = {
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout",
}
_TYPE_ERRORS = ("_type", "_parsing", "int_from_float")
_UNION_TAG = re.compile(r"[\[\]()-]|^(str|int|float|bool|list|dict|none)$")
_NAMED = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.+)$", re.DOTALL)


def error_type(status: int) -> str:
    """The OpenAI error `type` of an HTTP status."""
    if status in _TYPES:
        return _TYPES[status]
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(error: ServeRequestError) -> dict[str, t.Any]:
    return {
        "error": {
            "message": str(error),
            "type": error.error_type,
            "param": error.param,
            "code": error.code,
        }
    }


def error_response(error: ServeRequestError) -> JSONResponse:
    """The JSON reply for `error`, with Retry-After (whole seconds, rounded up) when set."""
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(0, math.ceil(error.retry_after_s)))
    if error.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(error), status_code=error.status_code, headers=headers)


def bad_request(
    message: str, *, code: str = "invalid_value", param: str | None = None
) -> ServeRequestError:
    return ServeRequestError(message, status_code=400, code=code, param=param)


MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a request body may have."""


def parse_json(raw: bytes) -> dict[str, t.Any]:
    """A request body as a JSON object; 400 for anything else, and for one nested deeper than
    MAX_JSON_DEPTH (which later steps would otherwise walk with recursion)."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise _too_deep() from None
    except (UnicodeDecodeError, ValueError) as error:
        raise bad_request(
            f"We could not parse the JSON body of your request ({error}).", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    check_tree(body)
    return body


def _too_deep() -> ServeRequestError:
    return bad_request(
        f"The JSON body of your request is nested too deeply (at most {MAX_JSON_DEPTH} levels).",
        code="invalid_json",
    )


def check_tree(value: t.Any) -> None:
    """400 for a body nested more than MAX_JSON_DEPTH deep, or with a string that holds a lone
    surrogate (a `\ud800` escape: valid JSON, but no UTF-8 reply could echo it back). Walked
    without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise bad_request(
                    "The JSON body of your request holds a lone UTF-16 surrogate "
                    "(an unpaired \\ud800-\\udfff escape), which is not valid Unicode.",
                    code="invalid_json",
                ) from None
        elif isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise _too_deep()
            children = list(item.items()) if isinstance(item, dict) else item
            for child in children:
                if isinstance(child, tuple):  # a key and its value
                    stack.extend((part, depth + 1) for part in child)
                else:
                    stack.append((child, depth + 1))


def _param(loc: t.Sequence[int | str]) -> str | None:
    """`("messages", 0, "content")` -> `messages[0].content`, without pydantic's union tags."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _UNION_TAG.search(part):
            out += f".{part}" if out else part
    return out or None


def from_validation(error: ValidationError) -> ServeRequestError:
    """400 for a body that does not validate, naming the field (the deepest error of a union,
    which is the one that got furthest)."""
    first = max(error.errors(), key=lambda e: len(e["loc"]))
    param = _param(first["loc"])
    if first["type"] == "extra_forbidden":
        return ServeRequestError(
            f"Unrecognized request argument supplied: {param}",
            code="unknown_parameter",
            param=param,
        )
    message = str(first["msg"]).removeprefix("Value error, ")
    named = _NAMED.match(message)
    if named and param is None:
        param, message = named.group(1), named.group(2)
    kind = str(first["type"])
    code = "invalid_type" if kind.endswith(_TYPE_ERRORS) else "invalid_value"
    if kind == "missing":
        code = "missing_required_parameter"
    where = f"{param}: " if param else ""
    return ServeRequestError(f"{where}{message}", code=code, param=param)


class CallFailed(Exception):
    """A generate call failed as a whole (not one item of it); `error` is why."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def with_id(message: str, request_id: str | None) -> str:
    return f"{message} (request id {request_id})" if request_id else message


def item_error(
    error: BaseException, *, request_id: str, model: str, secrets: t.Sequence[t.Any] = ()
) -> ServeRequestError:
    """What a generator's error means for its request, with nothing of the error's own text
    (it may name upstream URLs or model paths): a stable code, a generic message and the
    request id; the full error is logged under that id.

    An item's error: 400 for a rejected value, 504 for a timeout, 422 otherwise (the batch ran,
    so the fault is in this request). A call that failed whole: 400 when the generator lacks
    the endpoint, else 500. The log line is scrubbed with `secrets` (the generator: its
    api_key and the secrets of its identifier) besides the usual redaction."""
    if isinstance(error, ServeRequestError):
        return error
    if isinstance(error, CallFailed) and isinstance(error.error, NotImplementedError):
        return ServeRequestError(
            f"model {model!r} does not support this endpoint",
            code="unsupported_endpoint",
            param="model",
        )
    cause = error.error if isinstance(error, CallFailed) else error
    logger.error(
        "request %s to model %s failed: %s\n%s",
        request_id,
        redact(repr(model)),
        error_text(cause, *secrets),
        error_text(cause, *secrets, with_traceback=True),
    )
    if isinstance(error, CallFailed):
        status, kind, code, message = 500, "server_error", "generator_error", "The model failed"
    elif isinstance(error, TimeoutError):
        status, kind, code = 504, "timeout", "generation_timeout"
        message = "Generation timed out"
    elif isinstance(error, ValueError | TypeError | KeyError | IndexError):
        status, kind, code = 400, "invalid_request_error", "invalid_input"
        message = "The model rejected this request's input"
    else:
        status, kind, code = 422, "invalid_request_error", "generation_failed"
        message = "The model could not complete this request"
    return ServeRequestError(
        with_id(f"{message}; the server log has the details", request_id),
        status_code=status,
        error_type=kind,
        code=code,
    )


def timed_out(timeout_s: float, request_id: str) -> ServeRequestError:
    """504 for a request past the endpoint's `request_timeout_s`."""
    return ServeRequestError(
        with_id(f"The request took longer than {timeout_s:g} s and was stopped", request_id),
        status_code=504,
        error_type="timeout",
        code="request_timeout",
    )


def stopping(request_id: str) -> ServeRequestError:
    """503 for a request that a stopping server will not finish."""
    return ServeRequestError(
        with_id("The server is stopping; retry the request", request_id),
        status_code=503,
        error_type="server_error",
        code="server_shutting_down",
        retry_after_s=5.0,
    )


@functools.cache
def _serve_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """Serve's overload errors, and its errors for a replica or deployment that is gone."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError
    from ray.serve.exceptions import (
        BackPressureError,
        DeploymentUnavailableError,
        ReplicaUnavailableError,
    )

    unavailable = (
        DeploymentUnavailableError,
        ReplicaUnavailableError,
        ActorDiedError,
        ActorUnavailableError,
    )
    return (BackPressureError,), unavailable


def from_failure(
    error: BaseException, *, model: str | None = None, request_id: str | None = None
) -> ServeRequestError:
    """What any other failure means: overload is 503 or 429 with Retry-After, a replica that
    is gone is 503, anything unexpected is 500 (a server fault: client input never gets here,
    and its text is only logged, under the request id)."""
    if isinstance(error, ServeRequestError):
        return error
    back_pressure, unavailable = _serve_errors()
    cause = getattr(error, "cause", None)
    if isinstance(cause, ServeRequestError):
        return cause
    what = f"model {model!r}" if model else "the server"
    if isinstance(error, back_pressure):
        status = int(getattr(error, "status_code", 503))
        retry = getattr(error, "retry_after_s", None)
        return ServeRequestError(
            f"{what} is overloaded; retry later",
            status_code=status,
            error_type=error_type(status),
            code="rate_limit_exceeded" if status == 429 else "overloaded",
            retry_after_s=1.0 if retry is None else float(retry),
        )
    if isinstance(error, unavailable):
        return ServeRequestError(
            with_id(f"{what} is unavailable just now; retry later", request_id),
            status_code=503,
            error_type="server_error",
            code="unavailable",
            retry_after_s=5.0,
        )
    logger.error(
        "request %s failed unexpectedly: %s\n%s",
        request_id,
        error_text(error),
        error_text(error, with_traceback=True),
    )
    return ServeRequestError(
        with_id("The server had an error processing your request", request_id),
        status_code=500,
        error_type="server_error",
        code="internal_error",
    )


async def guarded(
    work: t.Awaitable[t.Any], *, model: str | None = None, request_id: str | None = None
) -> t.Any:
    """Await a route's work; any failure becomes its OpenAI error reply."""
    try:
        return await work
    except asyncio.CancelledError:
        raise
    except Exception as error:
        return error_response(from_failure(error, model=model, request_id=request_id))


def install_handlers(app: FastAPI) -> None:
    """OpenAI bodies for FastAPI's own errors (unknown route, wrong method, bad path
    parameter) and a last-resort handler for anything a route let escape."""

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
        message = f"{detail}: {request.method} {request.url.path}"
        code = {404: "not_found", 405: "method_not_allowed"}.get(status)
        return error_response(
            ServeRequestError(message, status_code=status, error_type=error_type(status), code=code)
        )

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        errors = exc.errors() if isinstance(exc, RequestValidationError) else []
        first = errors[0] if errors else {"loc": (), "msg": str(exc)}
        param = _param([p for p in first["loc"] if p not in ("body", "path", "query")])
        return error_response(ServeRequestError(f"{param}: {first['msg']}", param=param))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(from_failure(exc))

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
