"""The `serve` provider: a generator whose requests go to a running rig_ray Serve app.

`serve!<served name>,app=<app>,batch=<batch id>` sends each item, as one request, to the
deployment of the app that serves its routes (`deployment`: the ingress, or the one
deployment of a one-deployment app) through a Serve deployment handle; it gives the request
one of the slots its batches share and passes it on to the model, at batch priority. It is
how a `/v1/batches` job (a `rig_ray.batch.run` in the cluster) reaches the engine that serves
the app's online traffic. Only usable inside the Ray cluster that runs the app.
"""

from __future__ import annotations

import asyncio
import typing as t

from pydantic import Field, PrivateAttr

from rig_ray.errors import BatchStoppedError
from rig_ray.generator.base import GeneratedMessage, GeneratedText, Generator
from rig_ray.generator.params import GenerateParams
from rig_ray.message import Message

DEFAULT_APP = "rig_ray"
"""The app `rig-ray serve` runs (rig_ray.serve.APP_NAME)."""
INGRESS = "OpenAIIngress"
"""The app's ingress deployment (rig_ray.serve.INGRESS_NAME)."""
BACKPRESSURE_FIRST_WAIT_S = 0.2
BACKPRESSURE_LONGEST_WAIT_S = 5.0
"""How long a batch row waits before asking a full deployment again: doubling from the
first wait up to the longest."""


class ServeGenerator(Generator):
    """Items go to the served model `model` of the Serve app `app`, as rows of `batch`."""

    app: str = Field(DEFAULT_APP, min_length=1)
    """The Serve application."""
    deployment: str = Field(INGRESS, min_length=1)
    """The deployment that serves the app's routes (the model's own one in a one-deployment
    app)."""
    batch: str = ""
    """The `/v1/batches` batch the requests belong to (it shares slots with the others)."""

    _handle: t.Any = PrivateAttr(None)

    @property
    def is_loaded(self) -> bool:
        return self._handle is not None

    def load(self) -> t.Self:
        from ray import serve

        if self._handle is None:
            self._handle = serve.get_deployment_handle(self.deployment, self.app)
        return self

    def unload(self) -> t.Self:
        self._handle = None
        return self

    async def generate_messages(
        self, messages: t.Sequence[t.Sequence[Message]], params: t.Sequence[GenerateParams]
    ) -> t.Sequence[GeneratedMessage | BaseException]:
        merged = self.merged_params(params, len(messages))
        calls = [self._one("chat", list(m), p) for m, p in zip(messages, merged, strict=True)]
        return list(await asyncio.gather(*calls))

    async def generate_texts(
        self, texts: t.Sequence[str], params: t.Sequence[GenerateParams]
    ) -> t.Sequence[GeneratedText | BaseException]:
        merged = self.merged_params(params, len(texts))
        calls = [self._one("text", text, p) for text, p in zip(texts, merged, strict=True)]
        return list(await asyncio.gather(*calls))

    async def _one(self, kind: str, prompt: t.Any, params: GenerateParams) -> t.Any:
        """One request's result, or its error in place (a refused request's ServeRequestError
        keeps the endpoint's wording); raises `BatchStoppedError` once the batch is stopped."""
        self.load()
        handle = self._handle
        try:
            results = await admitted(
                lambda: handle.batch_request.remote(self.batch, self.model, kind, prompt, params)
            )
        except Exception as error:
            return error
        if isinstance(results[0], BatchStoppedError):
            raise results[0]
        return results[0]


async def admitted(send: t.Callable[[], t.Any]) -> t.Any:
    """The result of the Serve handle call that `send` makes, made again after a growing wait
    while the deployment is full (Serve's backpressure): a batch row has time, and online
    requests go first. Cancelling the wait cancels the call."""
    from ray.serve.exceptions import BackPressureError

    wait = BACKPRESSURE_FIRST_WAIT_S
    while True:
        call = send()
        try:
            return await call
        except BackPressureError:
            await asyncio.sleep(wait)
            wait = min(wait * 2, BACKPRESSURE_LONGEST_WAIT_S)
        except asyncio.CancelledError:
            call.cancel()
            raise
