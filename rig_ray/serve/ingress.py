"""The HTTP side: the FastAPI routes of the OpenAI API, bearer-token auth, and the Serve
ingress deployment that sends each request to its model's deployment."""

from __future__ import annotations

import hashlib
import hmac
import time
import typing as t
import uuid

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from rig_ray.errors import ServeRequestError
from rig_ray.generator.base import GeneratedMessage, GeneratedText, GenerateParams
from rig_ray.message import Message
from rig_ray.serve import http_errors, streaming, wire

OPEN_PATHS = frozenset({"/health"})
"""Routes that need no API key."""

_Req = t.TypeVar("_Req", bound=BaseModel)
_R = t.TypeVar("_R", GeneratedMessage, GeneratedText)


def key_digest(api_key: str) -> str:
    """What the ingress keeps of the API key: its SHA-256, never the key itself."""
    return hashlib.sha256(api_key.encode()).hexdigest()


class BearerAuth:
    """ASGI middleware: every route but OPEN_PATHS needs `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, *, digest: str) -> None:
        self.app = app
        self.digest = digest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _route_path(scope) not in OPEN_PATHS:
            scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                message = "Missing bearer token: send the header 'Authorization: Bearer <key>'."
                return await _unauthorized(message)(scope, receive, send)
            if not hmac.compare_digest(key_digest(token.strip()), self.digest):
                return await _unauthorized("Incorrect API key provided.")(scope, receive, send)
        await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


def _unauthorized(message: str) -> JSONResponse:
    return http_errors.error_response(
        ServeRequestError(message, status_code=401, code="invalid_api_key")
    )


class Backend(t.Protocol):
    """What the routes need from the deployment behind them."""

    created: int

    def model_names(self) -> list[str]: ...

    def check(self, model: str, params: GenerateParams) -> None:
        """Raise ServeRequestError for a model not served or params it does not allow."""

    async def chat(
        self, model: str, messages: list[Message], params: GenerateParams, n: int
    ) -> list[GeneratedMessage | BaseException]: ...

    async def complete(
        self, model: str, prompts: list[str], params: GenerateParams, n: int
    ) -> list[GeneratedText | BaseException]: ...


async def _parse(request: Request, model: type[_Req]) -> _Req:
    body = http_errors.parse_json(await request.body())
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise http_errors.from_validation(error) from None


def _succeeded(results: t.Sequence[_R | BaseException]) -> list[_R]:
    """The results, or the error of the first item that failed (the request fails whole)."""
    for result in results:
        if isinstance(result, BaseException):
            raise http_errors.from_item_failure(result)
    return t.cast(list[_R], list(results))


def _stream(events: list[str]) -> StreamingResponse:
    async def send() -> t.AsyncIterator[str]:
        for event in events:
            yield event

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(send(), media_type="text/event-stream", headers=headers)


def build_api(backend: Backend, *, api_key_digest: str | None = None) -> FastAPI:
    """The FastAPI app of the OpenAI routes on `backend`."""
    app = FastAPI(title="rig_ray", docs_url=None, redoc_url=None, openapi_url=None)
    http_errors.install_handlers(app)
    if api_key_digest is not None:
        app.add_middleware(BearerAuth, digest=api_key_digest)

    def model_card(name: str) -> dict[str, t.Any]:
        return wire.ModelCard(id=name, created=backend.created).model_dump()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models() -> dict[str, t.Any]:
        return {"object": "list", "data": [model_card(name) for name in backend.model_names()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> Response:
        async def work() -> Response:
            backend.check(name, GenerateParams())
            return JSONResponse(model_card(name))

        return t.cast(Response, await http_errors.guarded(work()))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return t.cast(Response, await http_errors.guarded(_chat(backend, request)))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return t.cast(Response, await http_errors.guarded(_complete(backend, request)))

    return app


async def _chat(backend: Backend, request: Request) -> Response:
    body = await _parse(request, wire.ChatCompletionRequest)
    params = body.to_params()
    backend.check(body.model, params)
    try:
        results = await backend.chat(body.model, body.to_messages(), params, body.n)
    except Exception as error:
        raise http_errors.from_failure(error, model=body.model) from None
    replies = _succeeded(results)
    request_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        events = streaming.chat_events(
            request_id, created, body.model, replies, include_usage=body.include_usage
        )
        return _stream(events)
    reply = wire.chat_completion(request_id, created, body.model, replies)
    return JSONResponse(reply.model_dump(mode="json"))


async def _complete(backend: Backend, request: Request) -> Response:
    body = await _parse(request, wire.CompletionRequest)
    params = body.to_params()
    backend.check(body.model, params)
    try:
        results = await backend.complete(body.model, body.prompts, params, body.n)
    except Exception as error:
        raise http_errors.from_failure(error, model=body.model) from None
    texts = _succeeded(results)
    request_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        return _stream(streaming.completion_events(request_id, created, body, texts))
    return JSONResponse(wire.completion(request_id, created, body, texts).model_dump(mode="json"))


class ModelRoute(t.NamedTuple):
    """Where the ingress sends a model's requests, and the most tokens one may ask for."""

    handle: t.Any
    max_tokens_limit: int | None


@serve.deployment(max_ongoing_requests=1024)
@serve.ingress()
class OpenAIIngress:
    """Routes OpenAI requests to the deployment of the model they name."""

    def __init__(self, routes: dict[str, ModelRoute], api_key_digest: str | None = None) -> None:
        self._routes = routes
        self._digest = api_key_digest
        self.created = int(time.time())

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self, api_key_digest=self._digest)

    def model_names(self) -> list[str]:
        return list(self._routes)

    def check(self, model: str, params: GenerateParams) -> None:
        route = self._routes.get(model)
        if route is None:
            served = ", ".join(self._routes)
            raise ServeRequestError(
                f"The model {model!r} does not exist (served: {served}).",
                status_code=404,
                code="model_not_found",
                param="model",
            )
        limit = route.max_tokens_limit
        if limit is not None and params.max_tokens is not None and params.max_tokens > limit:
            raise http_errors.bad_request(
                f"max_tokens: at most {limit} for model {model!r}", param="max_tokens"
            )

    async def chat(
        self, model: str, messages: list[Message], params: GenerateParams, n: int
    ) -> list[GeneratedMessage | BaseException]:
        return t.cast(
            list[GeneratedMessage | BaseException],
            await self._routes[model].handle.chat.remote(messages, params, n),
        )

    async def complete(
        self, model: str, prompts: list[str], params: GenerateParams, n: int
    ) -> list[GeneratedText | BaseException]:
        return t.cast(
            list[GeneratedText | BaseException],
            await self._routes[model].handle.complete.remote(prompts, params, n),
        )
