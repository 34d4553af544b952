"""`Generator.generate` / `agenerate`: many generations per input in one batched engine call.

A round sends every input `num_generations` times, side by side (`[a, a, b, b]` for two), in a
single `generate_texts` or `generate_messages` call, so the engine batches them all; the
results are then cut back into one list of `num_generations` results per input.
"""

from __future__ import annotations

import asyncio
import typing as t

from rig_ray.errors import GenerationError, InvalidMessageError, RigRayError
from rig_ray.message import Message, MessageLike

if t.TYPE_CHECKING:
    from rig_ray.generator.base import GeneratedMessage, GeneratedText, Generator
    from rig_ray.generator.params import GenerateParams

Prompt = str | t.Sequence[MessageLike]
"""One input of `generate`: a str to complete, or a conversation (Messages or OpenAI dicts)."""

Generated = t.Union["GeneratedText", "GeneratedMessage"]
"""One result of `generate`: a text completion or a chat reply."""

ProgressCallback = t.Callable[..., object]
"""Called as `progress_callback(advance=k)` when k more generations have finished."""

Kind = t.Literal["text", "chat"]

_T = t.TypeVar("_T")


def prepare(inputs: t.Sequence[Prompt]) -> tuple[Kind, list[str] | list[list[Message]]]:
    """Check the inputs are all texts or all conversations; conversations become Messages."""
    if isinstance(inputs, str) or not isinstance(inputs, t.Sequence):
        raise InvalidMessageError(inputs, "generate takes a list of inputs, one per prompt")
    items = list(inputs)
    if all(isinstance(item, str) for item in items):
        return "text", t.cast(list[str], items)
    if any(isinstance(item, str) for item in items):
        raise InvalidMessageError(
            inputs, "mix of texts and conversations: give all strs or all message lists"
        )
    return "chat", [Message.fit_many(t.cast(t.Sequence[MessageLike], item)) for item in items]


def check_count(num_generations: int) -> int:
    """`num_generations` as an int of at least 1, or a GenerationError saying so."""
    if isinstance(num_generations, bool) or not isinstance(num_generations, int):
        raise GenerationError(f"num_generations must be an int, not {num_generations!r}")
    if num_generations < 1:
        raise GenerationError(f"num_generations must be at least 1, not {num_generations}")
    return num_generations


async def agenerate(
    generator: Generator,
    inputs: t.Sequence[Prompt],
    num_generations: int = 1,
    *,
    params: GenerateParams | None = None,
    progress_callback: ProgressCallback | None = None,
) -> list[list[Generated]]:
    """Generate `num_generations` results per input in one batched call; see the module doc."""
    from rig_ray.generator.params import GenerateParams

    count = check_count(num_generations)
    kind, items = prepare(inputs)
    if not items:
        return []
    batch: list[t.Any] = [item for item in items for _ in range(count)]
    per_item = [params or GenerateParams()] * len(batch)
    if kind == "text":
        results: t.Sequence[t.Any] = await generator.generate_texts(batch, per_item)
    else:
        results = await generator.generate_messages(batch, per_item)
    if len(results) != len(batch):
        raise GenerationError(
            f"{type(generator).__name__} returned {len(results)} results for {len(batch)} items"
        )
    raise_failures(results, count)
    if progress_callback is not None:
        progress_callback(advance=len(batch))
    return [list(results[i * count : (i + 1) * count]) for i in range(len(items))]


def raise_failures(results: t.Sequence[object], count: int) -> None:
    """Raise a GenerationError for the first failed item, naming its input and the cause.

    `generate` returns results only; callers who want failures kept in place call
    `generate_texts` / `generate_messages`, which return them per item.
    """
    failed = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
    if not failed:
        return
    position, error = failed[0]
    raise GenerationError(
        f"{len(failed)} of {len(results)} generations failed; the first, for input "
        f"{position // count}: {type(error).__name__}: {error}",
        index=position // count,
    ) from t.cast(BaseException, error)


def run_sync(make: t.Callable[[], t.Coroutine[t.Any, t.Any, _T]], async_name: str) -> _T:
    """Run a coroutine to completion from plain (sync) code.

    Inside a running event loop a blocking call would stall that loop, so it is refused with a
    pointer to the async twin.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    raise RigRayError(
        f"called from a running event loop: use `await ...{async_name}(...)` there "
        "(the sync form is for plain scripts)"
    )


class SyncGenerate:
    """`generate`, the blocking twin of a class's `agenerate`, for plain scripts."""

    async def agenerate(
        self,
        inputs: t.Sequence[Prompt],
        num_generations: int = 1,
        *,
        params: GenerateParams | None = None,
        progress_callback: ProgressCallback | None = None,
    ) -> list[list[Generated]]:
        raise NotImplementedError

    def generate(
        self,
        inputs: t.Sequence[Prompt],
        num_generations: int = 1,
        *,
        params: GenerateParams | None = None,
        progress_callback: ProgressCallback | None = None,
    ) -> list[list[Generated]]:
        """`num_generations` results per input (all strs, or all conversations): what
        `agenerate` returns, run to completion. Inside an event loop, await `agenerate`."""
        return run_sync(
            lambda: self.agenerate(
                inputs, num_generations, params=params, progress_callback=progress_callback
            ),
            "agenerate",
        )
