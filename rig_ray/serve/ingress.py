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
from rig_ray.generator.params import GenerateParams
from rig_ray.message import Message
from rig_ray.serve import http_errors
from rig_ray.serve.auth import Auth
from rig_ray.serve.batch_lease import DEFAULT_LEASE_S
from rig_ray.serve.batch_route import Route
from rig_ray.serve.batch_runner import DEFAULT_MAX_IN_FLIGHT, batch_runner
from rig_ray.serve.limits import RequestLimits
from rig_ray.serve.routes import Stream, build_api
from rig_ray.serve.wire import VLLM_FIELDS

DEFAULT_REQUEST_TIMEOUT_S = 600.0
STOP_WAIT_S = 5.0
"""Longest wait, once the server stops, for the requests it stopped to be answered."""
READY_POLL_S = 0.5
"""Seconds between two tries to reach a model deployment that is not ready yet."""


def _deployment_name() -> str:
    """This replica's deployment (the batch jobs call back into it): the ingress, or the one
    deployment of a one-deployment app."""
    from rig_ray.serve.app import INGRESS_NAME

    try:
        return str(serve.get_replica_context().deployment or INGRESS_NAME)
    except Exception:  # not in a Serve replica
        return INGRESS_NAME


def _app_name() -> str:
    """The Serve application this replica belongs to (the batch jobs call back into it)."""
    from rig_ray.serve.app import APP_NAME

    try:
        return str(serve.get_replica_context().app_name or APP_NAME)
    except Exception:  # not in a Serve replica
        return APP_NAME


class ModelRoute(t.NamedTuple):
    """Where the ingress sends a model's requests, and what it may ask for."""

    handle: t.Any
    max_tokens_limit: int | None
    vllm_fields: bool = False
    """Whether the generator takes vLLM's extra sampling fields (ignore_eos, min_tokens, ...)."""


@serve.deployment(max_ongoing_requests=1024, max_constructor_retry_count=3)  # see ingress_capacity
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
        batch_lease_s: float = DEFAULT_LEASE_S,
        batch_window_s: float | None = None,
    ) -> None:
        self._routes = routes
        self._digest = (auth or Auth()).resolve()
        self.limits = limits or RequestLimits()
        self.timeout_s = request_timeout_s
        self.created = int(time.time())
        self._ready: set[str] = set()
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False
        self._inflight: dict[object, asyncio.Task[t.Any]] = {}
        """The tasks waiting on a replica for a request, by request."""
        self.batch_runner = batch_runner(
            batch_storage,
            {name: Route(route.handle, route.vllm_fields) for name, route in routes.items()},
            self.check,
            app=_app_name(),
            deployment=_deployment_name(),
            max_in_flight=batch_max_in_flight,
            lease_s=batch_lease_s,
            window_s=batch_window_s,
            limits=self.limits,
        )

    async def __del__(self) -> None:
        """Serve calls this as the replica stops: its batch jobs are stopped (each writes
        what it made) and their leases let go, so a new replica resumes them at once."""
        runner = getattr(self, "batch_runner", None)
        if runner is not None:
            await runner.close()

    async def batch_request(
        self, batch_id: str, model: str, kind: str, prompt: t.Any, params: GenerateParams
    ) -> list[t.Any]:
        """One row of a batch job (see `rig_ray.generator.serve_`): its result or error."""
        return await self.batch_runner.request(batch_id, model, kind, prompt, params)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self, api_key_digest=self._digest)

    def model_names(self) -> list[str]:
        return list(self._routes)

    async def check_health(self) -> None:
        """Serve's periodic check of the ingress: it starts the readiness watch early, and
        takes up the batches a stopped app left without waiting for a request."""
        self._watch()
        self.batch_runner.start()

    def ready_models(self) -> list[str]:
        """The models whose deployment has a replica with its generator loaded."""
        self._watch()
        return [name for name in self._routes if name in self._ready]

    def _watch(self) -> None:
        """Start, once, a task per model that waits until its deployment answers."""
        if self._watchers:
            return
        loop = asyncio.get_running_loop()
        self._watchers = [
            loop.create_task(self._wait_until_ready(name, route.handle))
            for name, route in self._routes.items()
        ]

    async def _wait_until_ready(self, name: str, handle: t.Any) -> None:
        """A replica only answers once its constructor has loaded the generator; a call
        refused meanwhile (a deployment still starting, or restarting) is tried again."""
        while True:
            try:
                async with asyncio.timeout(READY_POLL_S * 10):
                    await handle.ready.remote()
                self._ready.add(name)
                return
            except Exception:  # not up yet: a timeout, or a deployment not there yet
                await asyncio.sleep(READY_POLL_S)

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

    async def stop_requests(self, wait_s: float = STOP_WAIT_S) -> int:
        """The server is stopping: every request still waiting on a replica is answered 503
        `server_shutting_down` (its generation cancelled), and so is every new one. Returns
        how many were running, once they are answered (or after `wait_s`)."""
        self._stopping = True
        running = list(self._inflight.values())
        for task in running:
            task.cancel()
        deadline = time.monotonic() + wait_s
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return len(running)

    def _stopped(self, request_id: str) -> ServeRequestError | None:
        """The answer of a request cancelled by `stop_requests` (None for any other cancel)."""
        task = asyncio.current_task()
        if not self._stopping or task is None:
            return None
        task.uncancel()
        return http_errors.stopping(request_id)

    async def _within_timeout(self, response: t.Any, request_id: str) -> list[t.Any]:
        """The reply of a replica call; past the timeout, the call is cancelled and the
        request gets 504 (so is a caller that left, a client that hung up); a server that
        stops answers it 503."""
        if self._stopping:
            response.cancel()
            raise http_errors.stopping(request_id)
        key = object()
        self._inflight[key] = t.cast("asyncio.Task[t.Any]", asyncio.current_task())
        try:
            async with asyncio.timeout(self.timeout_s):
                return t.cast(list[t.Any], await response)
        except TimeoutError:
            response.cancel()
            raise http_errors.timed_out(self.timeout_s, request_id) from None
        except asyncio.CancelledError:
            response.cancel()
            if (stopped := self._stopped(request_id)) is not None:
                raise stopped from None
            raise
        finally:
            self._inflight.pop(key, None)

    async def _stream_within_timeout(self, response: t.Any, request_id: str) -> Stream:
        """The events of a streamed replica call until the request's deadline; past it, a
        504 error and the call cancelled. Closing this early cancels the call too."""
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        done, key = False, object()
        try:
            while not self._stopping:
                self._inflight[key] = t.cast("asyncio.Task[t.Any]", asyncio.current_task())
                try:
                    async with asyncio.timeout_at(deadline):
                        item = await response.__anext__()
                except StopAsyncIteration:
                    done = True
                    return
                except TimeoutError:
                    yield http_errors.timed_out(self.timeout_s, request_id)
                    return
                except asyncio.CancelledError:
                    if self._stopped(request_id) is None:
                        raise
                    break
                finally:
                    self._inflight.pop(key, None)
                yield item
            yield http_errors.stopping(request_id)
        finally:
            if not done:
                response.cancel()
