"""The Serve ingress deployment: sends each request to its model's deployment, within the
endpoint's request timeout (a request past it is cancelled there, which stops its generation
where the engine allows)."""

from __future__ import annotations

import asyncio
import time
import typing as t

from fastapi import FastAPI
from ray import serve

from rig_ray.errors import ServeRequestError
from rig_ray.generator.base import GenerateParams
from rig_ray.message import Message
from rig_ray.serve import http_errors
from rig_ray.serve.auth import Auth
from rig_ray.serve.batch_runner import DEFAULT_MAX_IN_FLIGHT, Route, batch_runner
from rig_ray.serve.limits import RequestLimits
from rig_ray.serve.routes import Stream, build_api
from rig_ray.serve.wire import VLLM_FIELDS

DEFAULT_REQUEST_TIMEOUT_S = 600.0


class ModelRoute(t.NamedTuple):
    """Where the ingress sends a model's requests, and what it may ask for."""

    handle: t.Any
    max_tokens_limit: int | None
    vllm_fields: bool = False
    """Whether the generator takes vLLM's extra sampling fields (ignore_eos, min_tokens, ...)."""


@serve.deployment(max_ongoing_requests=1024, max_constructor_retry_count=3)
@serve.ingress()
class OpenAIIngress:
    """Routes OpenAI requests to the deployment of the model they name."""

    def __init__(
        self,
        routes: dict[str, ModelRoute],
        auth: Auth | None = None,
        limits: RequestLimits | None = None,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        batch_storage: str | None = None,
        batch_max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self._routes = routes
        self._digest = (auth or Auth()).resolve()
        self.limits = limits or RequestLimits()
        self.timeout_s = request_timeout_s
        self.created = int(time.time())
        self.batch_runner = batch_runner(
            batch_storage,
            {name: Route(route.handle, route.vllm_fields) for name, route in routes.items()},
            self.check,
            max_in_flight=batch_max_in_flight,
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self, api_key_digest=self._digest)

    async def check_health(self) -> None:
        self.batch_runner.start()  # batches a stopped app left are taken up without a request

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
        for name in VLLM_FIELDS:
            if name in params.extra and not route.vllm_fields:
                raise http_errors.bad_request(
                    f"{name}: only vLLM generators take it, and model {model!r} is not one",
                    code="unsupported_parameter",
                    param=name,
                )

    async def chat(
        self, model: str, request_id: str, messages: list[Message], params: GenerateParams, n: int
    ) -> list[t.Any]:
        handle = self._routes[model].handle
        return await self._within_timeout(
            handle.chat.remote(request_id, messages, params, n), request_id
        )

    async def complete(
        self, model: str, request_id: str, prompts: list[str], params: GenerateParams, n: int
    ) -> list[t.Any]:
        handle = self._routes[model].handle
        return await self._within_timeout(
            handle.complete.remote(request_id, prompts, params, n), request_id
        )

    def stream_chat(
        self, model: str, request_id: str, messages: list[Message], params: GenerateParams, n: int
    ) -> Stream:
        handle = self._routes[model].handle.options(stream=True)
        response = handle.stream_chat.remote(request_id, messages, params, n)
        return self._stream_within_timeout(response, request_id)

    def stream_complete(
        self, model: str, request_id: str, prompts: list[str], params: GenerateParams, n: int
    ) -> Stream:
        handle = self._routes[model].handle.options(stream=True)
        response = handle.stream_complete.remote(request_id, prompts, params, n)
        return self._stream_within_timeout(response, request_id)

    async def _within_timeout(self, response: t.Any, request_id: str) -> list[t.Any]:
        """The reply of a replica call; past the timeout, the call is cancelled and the
        request gets 504 (so is a caller that left, a client that hung up)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return t.cast(list[t.Any], await response)
        except TimeoutError:
            response.cancel()
            raise http_errors.timed_out(self.timeout_s, request_id) from None
        except asyncio.CancelledError:
            response.cancel()
            raise

    async def _stream_within_timeout(self, response: t.Any, request_id: str) -> Stream:
        """The events of a streamed replica call until the request's deadline; past it, a
        504 error and the call cancelled. Closing this early cancels the call too."""
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        done = False
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        item = await response.__anext__()
                except StopAsyncIteration:
                    done = True
                    return
                except TimeoutError:
                    yield http_errors.timed_out(self.timeout_s, request_id)
                    return
                yield item
        finally:
            if not done:
                response.cancel()
