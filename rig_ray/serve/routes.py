"""The FastAPI routes of the OpenAI API on a `Backend` (the ingress deployment): body and
request caps, replies, streams, and a request id on every reply."""

from __future__ import annotations

import time
import typing as t
import uuid

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from rig_ray.errors import ServeRequestError
from rig_ray.generator.params import GenerateParams
from rig_ray.message import Message
from rig_ray.serve import http_errors, wire
from rig_ray.serve.auth import BearerAuth
from rig_ray.serve.limits import RequestLimits, check_request, read_body
from rig_ray.serve.streaming import EventStream, aclose

_Req = t.TypeVar("_Req", bound=BaseModel)
Stream = t.AsyncIterator[t.Any]
"""What a Backend's `stream_*` gives: None once accepted, then `(choice, chunk)`s; or a
ServeRequestError (first, for a refused request; last, for one that failed on the way)."""


class Backend(t.Protocol):
    """What the routes need from the deployment behind them."""

    created: int
    limits: RequestLimits

    def model_names(self) -> list[str]: ...

    def ready_models(self) -> list[str]:
        """The models that have loaded and can answer, in model_names' order."""

    def check(self, model: str, params: GenerateParams) -> None:
        """Raise ServeRequestError for a model not served or params it does not allow."""

    async def chat(
        self, model: str, request_id: str, messages: list[Message], params: GenerateParams, n: int
    ) -> list[t.Any]: ...

    async def complete(
        self, model: str, request_id: str, prompts: list[str], params: GenerateParams, n: int
    ) -> list[t.Any]: ...

    def stream_chat(
        self, model: str, request_id: str, messages: list[Message], params: GenerateParams, n: int
    ) -> Stream: ...

    def stream_complete(
        self, model: str, request_id: str, prompts: list[str], params: GenerateParams, n: int
    ) -> Stream: ...


async def _parse(request: Request, model: type[_Req], limits: RequestLimits) -> _Req:
    body = http_errors.parse_json(await read_body(request, limits))
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise http_errors.from_validation(error) from None


def _succeeded(results: t.Sequence[t.Any]) -> list[t.Any]:
    """The results, or the error of the request (the first item that failed)."""
    for result in results:
        if isinstance(result, ServeRequestError):
            raise result
    return list(results)


async def _streamed(stream: Stream, events: EventStream, request_id: str) -> Response:
    """An SSE reply from `stream`, once the replica has accepted the request (a refusal is an
    ordinary JSON error reply with its status)."""
    try:
        first = await anext(stream)
    except BaseException:
        await aclose(stream)
        raise
    if isinstance(first, ServeRequestError):
        await aclose(stream)
        raise first

    async def send() -> t.AsyncIterator[str]:
        try:
            async for item in stream:
                if isinstance(item, ServeRequestError):
                    for line in events.error(http_errors.error_body(item)):
                        yield line
                    return
                for line in events.events(*item):
                    yield line
            for line in events.end():
                yield line
        except Exception as error:  # a replica gone mid-stream
            failure = http_errors.from_failure(error, request_id=request_id)
            for line in events.error(http_errors.error_body(failure)):
                yield line
        finally:  # also when the client hangs up: the generation stops
            await aclose(stream)

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
    async def health() -> Response:
        ready = backend.ready_models()
        loading = [name for name in backend.model_names() if name not in ready]
        if loading:
            body = {"status": "loading", "loading": loading}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def list_models() -> dict[str, t.Any]:
        return {"object": "list", "data": [model_card(name) for name in backend.ready_models()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> Response:
        async def work() -> Response:
            backend.check(name, GenerateParams())
            return JSONResponse(model_card(name))

        return t.cast(Response, await http_errors.guarded(work()))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _with_id(lambda request_id: _chat(backend, request, request_id))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _with_id(lambda request_id: _complete(backend, request, request_id))

    runner = getattr(backend, "batch_runner", None)
    if runner is not None:
        from rig_ray.serve.batches import add_batch_routes
        from rig_ray.serve.files import add_file_routes

        add_file_routes(app, runner.store.files)
        add_batch_routes(app, runner)
    return app


def _serve_request_id() -> str:
    """The id Serve gave this request (the client's `x-request-id`, else a new one), which
    Serve sends back in the `x-request-id` header and writes in its replica logs."""
    try:
        from ray.serve.context import _get_serve_request_context

        return str(_get_serve_request_context().request_id or "")
    except Exception:  # not under Serve (or a Serve without it)
        return ""


async def _with_id(work: t.Callable[[str], t.Awaitable[Response]]) -> Response:
    serve_id = _serve_request_id()
    request_id = serve_id or uuid.uuid4().hex
    reply = t.cast(Response, await http_errors.guarded(work(request_id), request_id=request_id))
    if not serve_id:  # outside Serve: our own id, in the header Serve would send
        reply.headers["x-request-id"] = request_id
    return reply


async def _chat(backend: Backend, request: Request, request_id: str) -> Response:
    body = await _parse(request, wire.ChatCompletionRequest, backend.limits)
    check_request(body, backend.limits)
    params = body.to_params()
    backend.check(body.model, params)
    reply_id, created = f"chatcmpl-{request_id}", int(time.time())
    messages = body.to_messages()
    if body.stream:
        events = EventStream(
            reply_id, created, body.model, include_usage=body.include_usage, n=body.n
        )
        stream = backend.stream_chat(body.model, request_id, messages, params, body.n)
        return await _streamed(stream, events, request_id)
    results = await backend.chat(body.model, request_id, messages, params, body.n)
    reply = wire.chat_completion(reply_id, created, body.model, _succeeded(results))
    return JSONResponse(reply.model_dump(mode="json"))


async def _complete(backend: Backend, request: Request, request_id: str) -> Response:
    body = await _parse(request, wire.CompletionRequest, backend.limits)
    check_request(body, backend.limits)
    params = body.to_params()
    backend.check(body.model, params)
    reply_id, created = f"cmpl-{request_id}", int(time.time())
    if body.stream:
        events = EventStream(
            reply_id,
            created,
            body.model,
            include_usage=body.include_usage,
            n=body.n,
            prompts=body.prompts,
            echo=body.echo,
        )
        stream = backend.stream_complete(body.model, request_id, body.prompts, params, body.n)
        return await _streamed(stream, events, request_id)
    results = await backend.complete(body.model, request_id, body.prompts, params, body.n)
    texts = _succeeded(results)
    return JSONResponse(wire.completion(reply_id, created, body, texts).model_dump(mode="json"))
