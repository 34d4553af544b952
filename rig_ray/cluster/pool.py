"""LLMPool: several generators (often different models) sharing the generations of a batch."""

from __future__ import annotations

import asyncio
import random
import typing as t

from rig_ray.cluster.remote_generator import describe
from rig_ray.cluster.split import generations_per_member
from rig_ray.errors import InvalidPoolError, PoolMemberError
from rig_ray.generator.base import GeneratedMessage, GeneratedText, Generator
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.rounds import ProgressCallback, Prompt, SyncGenerate, prepare, run_sync

_CANCEL_GRACE_S = 5.0


def _member_error(member: Generator, error: BaseException) -> PoolMemberError:
    if isinstance(error, PoolMemberError):
        return error
    return PoolMemberError(describe(member), f"{type(error).__name__}: {error}")


async def _first_failure_cancels_rest(
    jobs: dict[asyncio.Future[t.Any], int], members: t.Sequence[Generator]
) -> dict[int, t.Any]:
    """Wait for every job (keyed by member index); the first failure cancels the others and
    raises at once, naming its member."""
    pending: set[asyncio.Future[t.Any]] = set(jobs)
    results: dict[int, t.Any] = {}
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for job in done:
                error = job.exception()
                if error is not None:
                    raise _member_error(members[jobs[job]], error) from error
                results[jobs[job]] = job.result()
    finally:
        for job in pending:
            job.cancel()
        if pending:
            await asyncio.wait(pending, timeout=_CANCEL_GRACE_S)
    return results


class LLMPool(SyncGenerate):
    """Two or more generators that share each input's generations by the split rule.

    `generate(inputs, num_generations)` gives every member `num_generations // n` generations
    and `num_generations % n` members, drawn at random without replacement (seedable), one
    more. Each member with a share gets the whole batch; members run concurrently, and each
    input's generations come back concatenated in member order.
    """

    def __init__(self, members: t.Sequence[Generator], *, seed: int | None = None) -> None:
        if isinstance(members, Generator) or not isinstance(members, t.Sequence):
            raise InvalidPoolError(
                "LLMPool takes a list of generators, e.g. LLMPool([g1, g2]), "
                f"not {type(members).__name__}"
            )
        for index, member in enumerate(members):
            if not isinstance(member, Generator):
                raise InvalidPoolError(
                    f"pool member {index} is a {type(member).__name__}, not a Generator; build "
                    "members with rig_ray.get_generator(identifier) or rig_ray.remote(...)"
                )
        if len(members) < 2:
            raise InvalidPoolError(
                f"an LLMPool needs at least two generators, got {len(members)}; "
                "call a single generator's generate(...) directly instead"
            )
        self._members: tuple[Generator, ...] = tuple(members)
        self._rng = random.Random(seed)

    @property
    def members(self) -> tuple[Generator, ...]:
        """The generators, in the order their generations are merged."""
        return self._members

    def __repr__(self) -> str:
        return f"LLMPool([{', '.join(describe(member) for member in self._members)}])"

    def generations_per_member(self, num_generations: int) -> list[int]:
        """Each member's share of `num_generations`; draws from the pool's seeded RNG."""
        return generations_per_member(num_generations, len(self._members), self._rng)

    async def agenerate(
        self,
        inputs: t.Sequence[Prompt],
        num_generations: int = 1,
        *,
        params: GenerateParams | None = None,
        progress_callback: ProgressCallback | None = None,
    ) -> list[list[GeneratedText | GeneratedMessage]]:
        """`num_generations` results per input, split over the members (`generate` is the
        blocking twin); a failing member raises a PoolMemberError at once."""
        _, items = prepare(inputs)  # bad inputs fail here, not once per member
        shares = self.generations_per_member(num_generations)
        if not items:
            return []
        jobs: dict[asyncio.Future[t.Any], int] = {
            asyncio.ensure_future(
                member.agenerate(items, share, params=params, progress_callback=progress_callback)
            ): position
            for position, (member, share) in enumerate(zip(self._members, shares, strict=True))
            if share
        }
        results = await _first_failure_cancels_rest(jobs, self._members)
        merged: list[list[GeneratedText | GeneratedMessage]] = [[] for _ in items]
        for position in sorted(results):  # member order
            for index, generations in enumerate(results[position]):
                merged[index].extend(generations)
        return merged

    async def _each(self, method: str) -> None:
        """Run a lifecycle method on every member concurrently; the first failure raises."""

        async def one(member: Generator) -> None:
            twin = getattr(member, f"a{method}", None)
            if twin is not None:
                await twin()
            else:
                await asyncio.to_thread(getattr(member, method))

        jobs: dict[asyncio.Future[t.Any], int] = {
            asyncio.ensure_future(one(m)): i for i, m in enumerate(self._members)
        }
        await _first_failure_cancels_rest(jobs, self._members)

    def load(self) -> LLMPool:
        """Load every member (remote members in parallel); returns when all are loaded."""
        run_sync(lambda: self._each("load"), "aload")
        return self

    def unload(self) -> LLMPool:
        """Unload every member, freeing their memory (e.g. to swap models on the same GPUs)."""
        run_sync(lambda: self._each("unload"), "aunload")
        return self

    async def aload(self) -> LLMPool:
        """The async twin of `load`."""
        await self._each("load")
        return self

    async def aunload(self) -> LLMPool:
        """The async twin of `unload`."""
        await self._each("unload")
        return self

    def teardown(self) -> None:
        """End remote members' actors and unload local members; a member that fails to does
        not keep the others alive (the first failure is raised after all were tried)."""
        failures: list[tuple[Generator, Exception]] = []
        for member in self._members:
            teardown = getattr(member, "teardown", None)
            try:
                if callable(teardown):
                    teardown()
                else:
                    member.unload()
            except Exception as error:
                failures.append((member, error))
        if failures:
            failed, cause = failures[0]
            raise _member_error(failed, cause) from cause
