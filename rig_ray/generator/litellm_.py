"""LiteLLM: any hosted or OpenAI-compatible API, with connection and pacing limits."""

from __future__ import annotations

import asyncio
import os
import time
import typing as t
import weakref

from pydantic import Field, PrivateAttr

from rig_ray._deps import require
from rig_ray.errors import GenerationError
from rig_ray.generator import structured
from rig_ray.generator.base import (
    GeneratedChunk,
    GeneratedMessage,
    GeneratedText,
    Generator,
    Messages,
    Usage,
    to_stop_reason,
)
from rig_ray.generator.params import GenerateParams
from rig_ray.message import Message


def _import_litellm() -> t.Any:
    # The cost map is otherwise fetched over the network at import time.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # litellm's default aiohttp transport ties sessions to the event loop that opened them;
    # rig_ray's sync calls (`generate`) run a loop per call, and every session left behind
    # prints "Unclosed client session". httpx's transport has no such tie.
    os.environ.setdefault("DISABLE_AIOHTTP_TRANSPORT", "True")
    litellm = require("litellm", purpose="the litellm provider")
    litellm.suppress_debug_info = True
    return litellm


class _RequestLimiter:
    """Caps requests in flight and spaces out their starts; one per event loop."""

    def __init__(self, max_connections: int, min_delay: float):
        self._slots = asyncio.Semaphore(max_connections)
        self._min_delay = min_delay
        self._pace = asyncio.Lock()
        self._last_start = float("-inf")

    async def __aenter__(self) -> None:
        await self._slots.acquire()
        try:
            if self._min_delay > 0:
                async with self._pace:
                    wait = self._last_start + self._min_delay - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    self._last_start = time.monotonic()
        except BaseException:  # cancelled while pacing: give the slot back
            self._slots.release()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._slots.release()


def _usage(response: t.Any) -> Usage | None:
    usage = getattr(response, "usage", None)
    if usage is None:
        return None
    return Usage(
        input_tokens=getattr(usage, "prompt_tokens", 0) or 0,
        output_tokens=getattr(usage, "completion_tokens", 0) or 0,
        total_tokens=getattr(usage, "total_tokens", 0) or 0,
    )


def _extra(response: t.Any) -> dict[str, t.Any]:
    return {"id": getattr(response, "id", None), "model": getattr(response, "model", None)}


_T = t.TypeVar("_T")


def _convert(response: t.Any, convert: t.Callable[[t.Any], _T]) -> _T | BaseException:
    """One response as a result; an error, or a response of the wrong shape, stays in place."""
    if isinstance(response, BaseException):
        return response
    try:
        return convert(response)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as error:
        return GenerationError(f"unreadable response from the provider: {error}")


class LiteLLMGenerator(Generator):
    """Calls a remote model through LiteLLM, one request per item, many in flight at once.

    The model is a LiteLLM route (`gpt-4o`, `openai/<name>` with `api_base=...`, ...); keys come
    from `api_key` or the provider's usual environment variables.
    """

    batches_continuously: t.ClassVar[bool] = True
    honours_json_schema: t.ClassVar[bool] = True

    max_connections: int = Field(10, ge=1)
    """Most requests in flight at once."""
    min_delay_between_requests: float = Field(0.0, ge=0)
    """Least seconds between the starts of two requests."""

    _limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _RequestLimiter] = PrivateAttr(
        default_factory=weakref.WeakKeyDictionary
    )

    def load(self) -> t.Self:
        """Import litellm (seconds, the first time), so the first request does not wait."""
        _import_litellm()
        return self

    def _limiter(self) -> _RequestLimiter:
        loop = asyncio.get_running_loop()
        if loop not in self._limiters:
            self._limiters[loop] = _RequestLimiter(
                self.max_connections, self.min_delay_between_requests
            )
        return self._limiters[loop]

    def _request_kwargs(self, params: GenerateParams) -> dict[str, t.Any]:
        kwargs = structured.litellm_request_kwargs(params.to_dict())
        if self.api_key is not None:
            kwargs["api_key"] = self.api_key
        return kwargs

    async def _send_all(
        self, call: str, inputs: list[dict[str, t.Any]], params: list[GenerateParams]
    ) -> list[t.Any]:
        """Send one `litellm.<call>` request per input, as many at once as the limiter lets
        through; errors come back in place."""
        litellm = await asyncio.to_thread(_import_litellm)  # the first import takes seconds
        send = getattr(litellm, call)
        limiter = self._limiter()

        async def one(request: dict[str, t.Any], p: GenerateParams) -> t.Any:
            async with limiter:
                return await send(model=self.model, **request, **self._request_kwargs(p))

        return await asyncio.gather(
            *(one(request, p) for request, p in zip(inputs, params, strict=True)),
            return_exceptions=True,
        )

    async def generate_messages(
        self, messages: Messages, params: t.Sequence[GenerateParams]
    ) -> t.Sequence[GeneratedMessage | BaseException]:
        merged = self.merged_params(params, len(messages))
        inputs = [{"messages": [m.to_openai() for m in conversation]} for conversation in messages]
        responses = await self._send_all("acompletion", inputs, merged)
        return [_convert(response, self._to_message) for response in responses]

    async def generate_texts(
        self, texts: t.Sequence[str], params: t.Sequence[GenerateParams]
    ) -> t.Sequence[GeneratedText | BaseException]:
        merged = self.merged_params(params, len(texts))
        responses = await self._send_all(
            "atext_completion", [{"prompt": text} for text in texts], merged
        )
        return [_convert(response, self._to_text) for response in responses]

    @staticmethod
    def _to_message(response: t.Any) -> GeneratedMessage:
        choice = response.choices[0]
        return GeneratedMessage(
            message=Message(role="assistant", content=choice.message.content or ""),
            stop_reason=to_stop_reason(choice.finish_reason),
            usage=_usage(response),
            extra=_extra(response),
        )

    @staticmethod
    def _to_text(response: t.Any) -> GeneratedText:
        choice = response.choices[0]
        return GeneratedText(
            text=choice.text or "",
            stop_reason=to_stop_reason(choice.finish_reason),
            usage=_usage(response),
            extra=_extra(response),
        )

    async def _stream_prompt(
        self, prompt: str | list[Message], params: GenerateParams | None
    ) -> t.AsyncIterator[GeneratedChunk]:
        """The reply as the API streams it (`stream=True`); the last chunk has the usage."""
        request: dict[str, t.Any]
        if isinstance(prompt, str):
            call, request = "atext_completion", {"prompt": prompt}
        else:
            call = "acompletion"
            request = {"messages": [message.to_openai() for message in prompt]}
        litellm = await asyncio.to_thread(_import_litellm)
        [merged] = self.merged_params([params or GenerateParams()], 1)
        kwargs = {**self._request_kwargs(merged), "stream": True}
        kwargs.setdefault("stream_options", {"include_usage": True})
        async with self._limiter():
            stream = await getattr(litellm, call)(model=self.model, **request, **kwargs)
            finish: str | None = None
            usage: Usage | None = None
            extra: dict[str, t.Any] = {}
            try:
                async for piece in stream:
                    usage = _usage(piece) or usage
                    extra = _extra(piece)
                    choices = getattr(piece, "choices", None) or []
                    if not choices:
                        continue
                    choice = choices[0]
                    finish = getattr(choice, "finish_reason", None) or finish
                    delta = getattr(choice, "delta", None)
                    text = getattr(delta, "content", None) if delta is not None else None
                    text = text if delta is not None else getattr(choice, "text", None)
                    if text:
                        yield GeneratedChunk(text=text)
            finally:
                await _close(stream)
        yield GeneratedChunk(stop_reason=to_stop_reason(finish), usage=usage, extra=extra)


async def _close(stream: t.Any) -> None:
    """Close a litellm stream (and its HTTP response); text streams wrap a chat stream."""
    for target in (stream, getattr(stream, "completion_stream", None)):
        close = getattr(target, "aclose", None)
        if close is not None:
            await close()
            return
