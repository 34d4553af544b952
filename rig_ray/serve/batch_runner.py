"""Running `/v1/batches` batches: each one a rig_ray batch job on the app's own deployments.

A batch's lines are read into its job folder by `rig_ray.batch.openai_files.prepare` (the
mapping `rig-ray batch` uses), then `rig_ray.batch.run` runs them as a Ray task
(`rig_ray.serve.batch_job`) whose rows come back to this ingress (`request`) and go on to the
model's deployment through its Serve handle: one engine serves online and batch traffic. The
ingress lets at most `max_in_flight` batch rows into the deployments at once, all batches
together, the slots going to the batches in turn (`FairSlots`), and sends them at
`BATCH_PRIORITY` (an engine that schedules by priority runs online requests first). The output
and error files are made by `rig_ray.batch.export_openai`.

The replica that holds a batch's lease (`BatchLeases`) runs it; a replica that starts, or
finds a lease gone stale, takes up the batches left running and resumes them: what the job
wrote is in its folder, and the job makes only what is missing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing as t
import uuid

from rig_ray.batch.causes import cause_line
from rig_ray.batch.openai_files import prepare, read_invalid
from rig_ray.batch.openai_lines import COMPLETIONS_URL
from rig_ray.errors import BatchInputError, BatchStoppedError, ServeRequestError
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.serve_ import INGRESS
from rig_ray.serve import batch_finish
from rig_ray.serve.batch_job import (
    cancel_job,
    job_spec,
    models_of,
    progress,
    requested,
    start_job,
    wait_for_job,
)
from rig_ray.serve.batch_lease import DEFAULT_LEASE_S, BatchLeases
from rig_ray.serve.batch_route import Route, send_row
from rig_ray.serve.batch_slots import FairSlots, SlotsClosed
from rig_ray.serve.batches import RUNNING, BatchError, BatchErrors, BatchObject, BatchStore
from rig_ray.serve.limits import RequestLimits

logger = logging.getLogger("ray.serve")

DEFAULT_MAX_IN_FLIGHT = 4
"""Batch requests in the model deployments at once, all batches together (per replica)."""
TICK_S = 1.0
"""How often a running batch's counts, lease, cancel and expiry are looked at."""
STOP_GRACE_S = 5.0
"""How long a stopped job has to end on its interrupt (`ray.cancel`) before its rows are
refused."""
_FINISHED = ("completed", "failed", "expired", "cancelled")


class BatchRunner:
    """Runs the batches of `store` on `routes` (served name -> Route) of the Serve app `app`;
    `check(model, params)` refuses what the endpoint refuses, as the endpoint words it, and
    each line's `n`, messages and stop strings are held to the endpoint's `limits`."""

    def __init__(
        self,
        store: BatchStore,
        routes: dict[str, Route],
        check: t.Callable[[str, GenerateParams], None],
        *,
        app: str,
        deployment: str = INGRESS,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        lease_s: float = DEFAULT_LEASE_S,
        limits: RequestLimits | None = None,
    ) -> None:
        self.store = store
        self.limits = limits
        self.app = app
        self.deployment = deployment
        self.slots = FairSlots(max_in_flight)
        self.leases = BatchLeases(store.filesystem, store.root, lease_s=lease_s)
        self._routes = routes
        self._check = check
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._jobs: dict[str, t.Any] = {}  # batch id -> the job's ObjectRef, while it runs
        self._cancelled: set[str] = set()
        self._closing = False
        self._adopting: asyncio.Task[None] | None = None
        self._adopted_at = -float("inf")

    # -- taking batches up -------------------------------------------------------------------

    def start(self) -> None:
        """Take up, in the background, the running batches no live replica holds (at most
        every lease_s / 3)."""
        now = time.monotonic()
        if self._closing or now - self._adopted_at < self.leases.lease_s / 3:
            return
        if self._adopting is None or self._adopting.done():
            self._adopted_at = now
            self._adopting = asyncio.get_running_loop().create_task(self._adopt())

    async def _adopt(self) -> None:
        for batch in await asyncio.to_thread(self.store.list):
            running = self._tasks.get(batch.id)
            if batch.status not in RUNNING or (running is not None and not running.done()):
                continue
            if await asyncio.to_thread(self.leases.claim, batch.id):
                self._launch(batch.id)

    async def created(self, batch_id: str) -> None:
        """A batch made by this replica: it holds the lease and runs it."""
        await asyncio.to_thread(self.leases.claim, batch_id)
        self._launch(batch_id)

    def _launch(self, batch_id: str) -> None:
        task = self._tasks.get(batch_id)
        if task is None or task.done():
            self._tasks[batch_id] = asyncio.get_running_loop().create_task(self._run(batch_id))

    async def cancel(self, batch_id: str) -> BatchObject:
        batch = await asyncio.to_thread(self.store.get, batch_id)
        if batch.status in (*_FINISHED, "cancelling"):
            return batch
        self._cancelled.add(batch_id)
        batch = batch.moved("cancelling")
        await asyncio.to_thread(self.store.save, batch)
        return batch  # the replica that runs it sees the status and stops it

    # -- the batch's requests ----------------------------------------------------------------

    async def request(
        self, batch_id: str, model: str, kind: str, prompt: t.Any, params: GenerateParams
    ) -> list[t.Any]:
        """One row of a batch job through the model's deployment, when a slot is free: its
        result, or the error the endpoint would have answered, in a list of one."""
        request_id = f"{batch_id}-{uuid.uuid4().hex[:12]}"
        try:
            self._check(model, params)
            async with self.slots.hold(batch_id):
                return await send_row(self._routes[model], request_id, kind, prompt, params)
        except ServeRequestError as error:
            return [error]
        except SlotsClosed:  # the job stops on it (`serve!` raises it), making no error row
            return [BatchStoppedError(batch_id)]

    # -- one batch ---------------------------------------------------------------------------

    async def _run(self, batch_id: str) -> None:
        try:
            batch = await asyncio.to_thread(self.store.get, batch_id)
            if batch.status == "validating":
                batch = await self._validate(batch)
            if batch.status == "in_progress":
                generated = await self._generate(batch)
                if generated is None:  # this replica stops, or another one took it over
                    return
                batch = generated
            if batch.status in ("finalizing", "cancelling"):
                await self._finish(batch, "cancelled" if batch.status == "cancelling" else None)
            elif batch.status == "expired" and batch.output_file_id is None:
                await self._finish(batch, "expired")
        except Exception as error:  # the batch fails; the app goes on
            logger.exception("batch %s failed", batch_id)
            batch = await asyncio.to_thread(self.store.get, batch_id)
            failure = BatchError(code="batch_failed", message=cause_line(error))
            failed = batch.moved("failed", errors=BatchErrors(data=[failure]))
            await asyncio.to_thread(self.store.save, failed)
        finally:
            self._cancelled.discard(batch_id)
            if not self._closing:
                await asyncio.to_thread(self.leases.release, batch_id)

    async def _validate(self, batch: BatchObject) -> BatchObject:
        if self._stop_reason(batch) is not None:
            return await self._stopped_early(batch)
        source = self.store.files.content_location(batch.input_file_id)
        job = self.store.job_location(batch.id)
        vllm = bool(self._routes) and all(route.vllm_fields for route in self._routes.values())
        try:
            prepared = await asyncio.to_thread(
                prepare,
                source,
                job,
                vllm_fields=vllm,
                urls=(batch.endpoint,),
                limits=self.limits,
            )
        except BatchInputError as error:
            return await self._fail(batch, [BatchError(code="invalid_file", message=str(error))])
        if not prepared.valid + prepared.invalid:
            empty = BatchError(code="empty_file", message="The batch input file is empty.")
            return await self._fail(batch, [empty])
        model, refused = self._model(await asyncio.to_thread(models_of, job))
        if refused:
            return await self._fail(batch, refused)
        invalid = await asyncio.to_thread(read_invalid, job)
        errors = [
            BatchError(code=line.code, message=line.message, param=line.param, line=line.line)
            for line in invalid[:100]
        ]
        counts = batch.request_counts.model_copy(
            update={"total": prepared.valid + prepared.invalid, "failed": prepared.invalid}
        )
        moved = batch.moved(
            "in_progress",
            model=model,
            request_counts=counts,
            errors=BatchErrors(data=errors) if errors else None,
        )
        return await self._save_unless_cancelled(moved)

    def _model(self, lines: list[tuple[int, str]]) -> tuple[str, list[BatchError]]:
        """The one served model the batch's lines name (with one model served, any name is
        taken), or the errors of the lines that name another one."""
        names = list(self._routes)
        if len(names) == 1 or not lines:
            return names[0], []
        chosen = lines[0][1]
        refused = []
        for line, name in lines:
            if name not in self._routes:
                message = f"The model {name!r} does not exist (served: {', '.join(names)})."
                refused.append(BatchError(code="model_not_found", message=message, line=line))
            elif name != chosen:
                message = f"a batch runs on one model: this line names {name!r}, line "
                message += f"{lines[0][0]} names {chosen!r}"
                refused.append(BatchError(code="model_mismatch", message=message, line=line))
        return chosen, refused[:100]

    async def _fail(self, batch: BatchObject, errors: list[BatchError]) -> BatchObject:
        failed = batch.moved("failed", errors=BatchErrors(data=errors))
        await asyncio.to_thread(self.store.save, failed)
        return failed

    async def _save_unless_cancelled(self, batch: BatchObject) -> BatchObject:
        latest = await asyncio.to_thread(self.store.get, batch.id)
        if latest.status == "cancelling":  # cancelled meanwhile (here or on another replica)
            batch = batch.model_copy(
                update={"status": "cancelling", "cancelling_at": latest.cancelling_at}
            )
        await asyncio.to_thread(self.store.save, batch)
        return batch

    def _stop_reason(self, batch: BatchObject) -> str | None:
        if self._closing:
            return "closing"
        if batch.status == "cancelling" or batch.id in self._cancelled:
            return "cancelled"
        if batch.expires_at is not None and self.store.now() >= batch.expires_at:
            return "expired"
        return None

    async def _stopped_early(self, batch: BatchObject) -> BatchObject:
        reason = self._stop_reason(batch)
        if reason == "expired":
            return batch.moved("expired")  # _run exports what it made
        if reason == "cancelled" and batch.status != "cancelling":
            return batch.moved("cancelling")
        return batch

    async def _generate(self, batch: BatchObject) -> BatchObject | None:
        """Run the batch's job until it ends or is stopped: the batch as it then is (None
        when this replica no longer runs it)."""
        job = self.store.job_location(batch.id)
        wanted = await asyncio.to_thread(requested, job)
        model = batch.model if batch.model in self._routes else next(iter(self._routes))
        most_n = max(wanted.values(), default=1)
        spec = job_spec(
            batch.id,
            job,
            model,
            most_n,
            self.slots.size,
            app=self.app,
            deployment=self.deployment,
        )
        self.slots.open(batch.id)
        ref = start_job(spec)
        self._jobs[batch.id] = ref
        waiting = asyncio.ensure_future(wait_for_job(ref))
        reason: str | None = None
        try:
            while reason is None and not waiting.done():
                await asyncio.wait({waiting}, timeout=TICK_S)
                batch, reason = await self._tick(batch, job, wanted)
        finally:
            if not waiting.done():
                cancel_job(ref)
                await asyncio.wait({waiting}, timeout=STOP_GRACE_S)
            # Rows still waiting for a slot, and any the job sends after, are refused: a job
            # the interrupt did not end stops on the first of them (`BatchStoppedError`).
            self.slots.close(batch.id)
            await asyncio.wait({waiting})
            self._jobs.pop(batch.id, None)
        error = waiting.exception()  # retrieved: a stopped job's ending is no failure
        if reason in ("closing", "lost"):
            return None
        if reason is not None:
            return await self._stopped_early(batch)
        if error is not None:
            raise error
        return await self._save_unless_cancelled(batch.moved("finalizing"))

    async def _tick(
        self, batch: BatchObject, job: str, wanted: dict[str, int]
    ) -> tuple[BatchObject, str | None]:
        """Renew the lease, look for a cancel or the expiry, save the counts."""
        if not await asyncio.to_thread(self.leases.renew, batch.id):
            return batch, "lost"
        latest = await asyncio.to_thread(self.store.get, batch.id)
        if (reason := self._stop_reason(latest)) is not None:
            return latest, reason
        completed, failed = await asyncio.to_thread(progress, job, wanted)
        invalid = len(await asyncio.to_thread(read_invalid, job))
        counts = latest.request_counts.model_copy(
            update={"completed": completed, "failed": failed + invalid}
        )
        if counts != latest.request_counts:
            latest = latest.model_copy(update={"request_counts": counts})
            await asyncio.to_thread(self.store.save, latest)
        return latest, None

    async def _finish(self, batch: BatchObject, status: str | None) -> None:
        """Export the files; `status` None: completed."""
        done = await asyncio.to_thread(batch_finish.finish, self.store, batch, status)
        await asyncio.to_thread(self.store.save, done)

    # -- shutting down -----------------------------------------------------------------------

    async def close(self, wait_s: float = 10.0) -> None:
        """The replica stops: each running job is stopped (it writes what it made) and the
        leases let go, so that a new replica takes the batches up at once."""
        self._closing = True
        tasks = [task for task in self._tasks.values() if not task.done()]
        for ref in list(self._jobs.values()):
            cancel_job(ref)
        if tasks:
            await asyncio.wait(tasks, timeout=wait_s)
        for batch_id in list(self._tasks):
            await asyncio.to_thread(self.leases.release, batch_id)


def default_storage() -> str:
    """Where files and batches are kept unless `--batch-storage` says: under RIG_RAY_CACHE."""
    from rig_ray.embedded import cache_dir

    return str(cache_dir() / "batch-storage")


def batch_runner(
    storage: str | None,
    routes: dict[str, Route],
    check: t.Callable[[str, GenerateParams], None],
    *,
    app: str,
    deployment: str = INGRESS,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    lease_s: float = DEFAULT_LEASE_S,
    window_s: float | None = None,
    limits: RequestLimits | None = None,
) -> BatchRunner:
    """The runner of the batches (and the store of the files) under `storage`."""
    from rig_ray.serve.files import FileStore

    store = BatchStore(FileStore(storage or default_storage()), window_s=window_s)
    return BatchRunner(
        store,
        routes,
        check,
        app=app,
        deployment=deployment,
        max_in_flight=max_in_flight,
        lease_s=lease_s,
        limits=limits,
    )


__all__ = ["COMPLETIONS_URL", "DEFAULT_MAX_IN_FLIGHT", "BatchRunner", "batch_runner"]
