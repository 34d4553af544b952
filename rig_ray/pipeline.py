"""What chat and completion pipelines share: params, metadata, wrapping, error handling, watchers.

Every builder method returns a new pipeline and leaves the one it was called on as it was, so a
base pipeline can be specialised many ways (`base.with_(temperature=t)` in a loop).
"""

from __future__ import annotations

import copy
import inspect
import typing as t

from rig_ray.errors import GenerationError, InvalidMessageError
from rig_ray.generator.base import Generator
from rig_ray.generator.params import GenerateParams

FailMode = t.Literal["raise", "skip", "include"]
"""What a run does with an item whose generation failed with a caught error: raise it, leave
the item out of the results, or return it marked `failed` with its `error`."""

_Result = t.TypeVar("_Result")
_Self = t.TypeVar("_Self", bound="Pipeline")

BatchCall = t.Callable[[list[t.Any], list[GenerateParams]], t.Awaitable[t.Sequence[t.Any]]]
"""The generation call a pipeline makes: a batch of inputs and one params each, one result or
exception per item back."""

Watcher = t.Callable[[list[t.Any]], t.Any]
"""Called with the results of every run (sync or async)."""


class Pipeline:
    """Settings that every run of a chat or completion pipeline applies."""

    def __init__(self, generator: Generator, params: GenerateParams | None = None):
        if not isinstance(generator, Generator):
            raise TypeError(f"expected a Generator, got {type(generator).__name__}")
        self.generator = generator
        self.params = params
        self.metadata: dict[str, t.Any] = {}
        self.wrappers: tuple[t.Callable[[t.Any], t.Any], ...] = ()
        self.errors: tuple[type[BaseException], ...] = ()
        self.on_failed: FailMode = "raise"
        self.watchers: tuple[Watcher, ...] = ()

    def clone(self: _Self) -> _Self:
        """An independent copy (the generator itself is shared: it holds no per-run state)."""
        twin = copy.copy(self)
        twin.metadata = copy.deepcopy(self.metadata)
        return twin

    def with_(self: _Self, params: GenerateParams | None = None, **kwargs: t.Any) -> _Self:
        """Overlay generation params, as a `GenerateParams` or as keyword arguments."""
        extra = GenerateParams(**kwargs) if kwargs else None
        twin = self.clone()
        twin.params = (self.params or GenerateParams()).merge_with(params, extra)
        return twin

    def meta(self: _Self, **kwargs: t.Any) -> _Self:
        """Add metadata, carried onto every result this pipeline makes."""
        twin = self.clone()
        twin.metadata.update(kwargs)
        return twin

    def wrap(self: _Self, decorator: t.Callable[[t.Any], t.Any]) -> _Self:
        """Wrap this pipeline's generation calls with `decorator`, e.g. `backoff.on_exception`.

        The wrapped function takes no arguments and raises the first error of the items still
        failing; each call of it generates only those items again, in one batch. When the
        decorator gives up, the failures stay in place for `catch` to handle.
        """
        twin = self.clone()
        twin.wrappers = (*self.wrappers, decorator)
        return twin

    def catch(self: _Self, *errors: type[BaseException], on_failed: FailMode = "include") -> _Self:
        """Turn failures of these error types (any Exception when none are given) into results
        marked failed (`on_failed="include"`) or drop them (`"skip"`), instead of raising
        (`"raise"` still raises them)."""
        if on_failed not in t.get_args(FailMode):
            raise ValueError(f"on_failed must be one of {t.get_args(FailMode)}, got {on_failed!r}")
        twin = self.clone()
        twin.errors = (*self.errors, *(errors or (Exception,)))
        twin.on_failed = on_failed
        return twin

    def watch(self: _Self, *callbacks: Watcher) -> _Self:
        """Call each callback with the results of every run (failed ones included)."""
        twin = self.clone()
        twin.watchers = (*self.watchers, *callbacks)
        return twin

    # -- running -------------------------------------------------------------------------------

    def item_params(self, params: t.Any, count: int) -> list[GenerateParams]:
        """The pipeline's params overlaid with per-item params (None, one, or one per item)."""
        base = self.params or GenerateParams()
        if params is None or isinstance(params, GenerateParams):
            return [base.merge_with(params)] * count
        params = list(params)
        if len(params) != count:
            raise GenerationError(f"run_batch got {count} inputs but {len(params)} params")
        return [base.merge_with(p) for p in params]

    async def generate(
        self, call: BatchCall, items: list[t.Any], params: list[GenerateParams]
    ) -> list[t.Any]:
        """One batch call for all items (more, only for retries under `wrap`); one result or
        exception per item."""
        if not items:
            return []
        results: list[t.Any] = [None] * len(items)
        pending = list(range(len(items)))

        async def attempt() -> None:
            nonlocal pending
            outcome = await _call_batch(
                call, [items[i] for i in pending], [params[i] for i in pending]
            )
            for index, result in zip(pending, outcome, strict=True):
                results[index] = result
            pending = [i for i in pending if isinstance(results[i], BaseException)]
            if pending and self.wrappers:
                raise results[pending[0]]

        wrapped: t.Callable[[], t.Awaitable[None]] = attempt
        for decorator in self.wrappers:
            wrapped = decorator(wrapped)
        try:
            await wrapped()
        except Exception as error:
            if not any(error is result for result in results):
                raise  # not an item's failure that a wrapper gave up on
        return results

    def settle(self, results: list[_Result], *, keep_failed: bool = False) -> list[_Result]:
        """Apply the fail mode: raise an uncaught failure, drop skipped ones (unless
        `keep_failed`: a single run has nothing else to return)."""
        for result in results:
            error = getattr(result, "error", None)
            caught = isinstance(error, self.errors) and self.on_failed != "raise"
            if error is not None and not caught:
                raise error
        if self.on_failed == "skip" and not keep_failed:
            return [r for r in results if not getattr(r, "failed", False)]
        return results

    async def notify(self, results: list[t.Any]) -> None:
        """Call the watchers with this run's results."""
        for watcher in self.watchers:
            outcome = watcher(list(results))
            if inspect.isawaitable(outcome):
                await outcome


async def _call_batch(
    call: BatchCall, items: list[t.Any], params: list[GenerateParams]
) -> list[t.Any]:
    """The call's results, or its exception in place of each item if it raised."""
    try:
        outcome = list(await call(items, params))
    except (InvalidMessageError, TypeError, NotImplementedError):
        raise  # the batch itself is wrong, or the generator cannot do this: no item can succeed
    except Exception as error:
        return [error] * len(items)
    if len(outcome) != len(items):
        wrong = GenerationError(f"generator returned {len(outcome)} results for {len(items)} items")
        return [wrong] * len(items)
    return outcome
