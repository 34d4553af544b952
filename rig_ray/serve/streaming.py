"""`stream: true` replies as server-sent events, chunk by chunk as the generator makes them.

Per choice: a chunk with the role (chat), a chunk per piece of text, and a chunk with its
finish_reason; then, when asked (`stream_options.include_usage`), a chunk with the usage; then
`data: [DONE]`. Generators that cannot stream give one piece holding the whole reply.
`merge_streams` runs the `n` streams of one request side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import typing as t

from rig_ray.generator.base import GeneratedChunk, Usage
from rig_ray.serve.wire import UsageOut

DONE = "data: [DONE]\n\n"


def event(payload: dict[str, t.Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


class EventStream:
    """The SSE events of one streamed request, built as its chunks arrive.

    `prompts` are the prompts of a text completion (None for a chat); with `echo`, each
    choice starts with its prompt. Choices are numbered prompt by prompt, `n` each.
    """

    def __init__(
        self,
        request_id: str,
        created: int,
        model: str,
        *,
        include_usage: bool,
        n: int = 1,
        prompts: t.Sequence[str] | None = None,
        echo: bool = False,
    ) -> None:
        self.chat = prompts is None
        self.base: dict[str, t.Any] = {
            "id": request_id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": created,
            "model": model,
        }
        self.include_usage = include_usage
        self.n = n
        self.prompts = list(prompts or [])
        self.echo = echo
        self._started: set[int] = set()
        self._usage: dict[int, Usage] = {}

    def _chunk(self, index: int, piece: t.Any, finish_reason: str | None = None) -> str:
        choice = {"index": index, "logprobs": None, "finish_reason": finish_reason}
        choice["delta" if self.chat else "text"] = piece
        return event({**self.base, "choices": [choice], **self._usage_field()})

    def _usage_field(self) -> dict[str, t.Any]:
        return {"usage": None} if self.include_usage else {}

    def events(self, index: int, chunk: GeneratedChunk) -> list[str]:
        """The events for the next chunk of choice `index`."""
        out = []
        text = chunk.text
        if index not in self._started:
            self._started.add(index)
            if self.chat:
                out.append(self._chunk(index, {"role": "assistant", "content": ""}))
            elif self.echo:
                text = self.prompts[index // self.n] + text
        if text:
            out.append(self._chunk(index, {"content": text} if self.chat else text))
        if chunk.stop_reason is not None:
            out.append(self._chunk(index, {} if self.chat else "", chunk.stop_reason))
            if chunk.usage is not None:
                self._usage[index] = chunk.usage
        return out

    def end(self) -> list[str]:
        """The usage chunk (when asked for) and `[DONE]`."""
        if not self.include_usage:
            return [DONE]
        usage = None
        if self._usage:  # each prompt's tokens once (its first choice), every choice's output
            prompt = sum(u.input_tokens for i, u in self._usage.items() if i % self.n == 0)
            output = sum(u.output_tokens for u in self._usage.values())
            usage = UsageOut(
                prompt_tokens=prompt, completion_tokens=output, total_tokens=prompt + output
            ).model_dump()
        return [event({**self.base, "choices": [], "usage": usage}), DONE]

    def error(self, body: dict[str, t.Any]) -> list[str]:
        """A failure after the stream started: an `error` event (which the `openai` client
        raises as an APIError), then `[DONE]`."""
        return [event(body), DONE]


async def merge_streams(
    streams: t.Sequence[t.AsyncIterator[GeneratedChunk]],
) -> t.AsyncIterator[tuple[int, GeneratedChunk]]:
    """`(index, chunk)` from every stream as each arrives. The first stream that fails fails
    the whole; leaving early (or being cancelled) cancels the streams still running."""
    if len(streams) == 1:  # no tasks needed: closing this closes the one stream
        try:
            async for chunk in streams[0]:
                yield 0, chunk
        finally:
            await aclose(streams[0])
        return
    queue: asyncio.Queue[tuple[int, GeneratedChunk | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: t.AsyncIterator[GeneratedChunk]) -> None:
        try:
            async for chunk in stream:
                await queue.put((index, chunk))
        except Exception as error:
            await queue.put((index, error))
        else:
            await queue.put((index, None))
        finally:
            await aclose(stream)

    tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def aclose(stream: t.AsyncIterator[t.Any]) -> None:
    """Close an async generator (stops the generation behind it); other iterators are left."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
