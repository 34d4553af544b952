"""Running `/v1/batches` jobs inside the ingress, on the app's own model deployments.

A batch's lines are read into its job folder by `rig_ray.batch.openai_files.prepare` (the
mapping `rig-ray batch` uses), sent one request at a time to the model's deployment through its
Serve handle, and written as Parquet parts by the batch job's own writer; the output and error
files are made by `rig_ray.batch.export_openai`. One engine serves online and batch traffic:
all batches together keep at most `max_in_flight` requests in the deployments, so online
requests wait behind a few batch requests at most, and the slots go to the batches in turn.
What a batch made is in its job folder, so an app that restarts takes up every batch left
`in_progress` and makes only the lines not written yet.
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing as t
import uuid

from rig_ray.batch.openai_export import export_openai
from rig_ray.batch.openai_files import COMPLETIONS_URL, prepare, read_invalid
from rig_ray.batch.output import OutputFolder
from rig_ray.errors import BatchInputError, ServeRequestError
from rig_ray.generator.base import GenerateParams
from rig_ray.message import Message
from rig_ray.redaction import redact
from rig_ray.serve.batches import (
    RUNNING,
    BatchError,
    BatchErrors,
    BatchObject,
    BatchStore,
    RequestCounts,
    Status,
)

if t.TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger("ray.serve")

DEFAULT_MAX_IN_FLIGHT = 4
"""Batch requests in the model deployments at once, all batches together."""
_SAVE_EVERY_S = 2.0
_FINISHED = ("completed", "failed", "expired", "cancelled")


class Route(t.NamedTuple):
    """A served model, as the runner sends to it."""

    handle: t.Any
    vllm_fields: bool


class BatchRunner:
    """Runs the batches of `store` on `routes` (served name -> Route); `check(model, params)`
    refuses what the endpoint refuses, as the endpoint words it."""

    def __init__(
        self,
        store: BatchStore,
        routes: dict[str, Route],
        check: t.Callable[[str, GenerateParams], None],
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self.store = store
        self._routes = routes
        self._check = check
        self._max_in_flight = max_in_flight
        self._slots: asyncio.Semaphore | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._started = False

    def start(self) -> None:
        """Take up the batches a stopped app left running (once, on the running loop)."""
        if self._started:
            return
        self._started = True
        for batch in self.store.list():
            if batch.status in RUNNING:
                if batch.status == "cancelling":
                    self._cancelled.add(batch.id)
                self.launch(batch.id)

    def launch(self, batch_id: str) -> None:
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
        self.launch(batch_id)  # a running batch sees the flag; a waiting one finishes now
        return batch

    async def _run(self, batch_id: str) -> None:
        try:
            batch = await asyncio.to_thread(self.store.get, batch_id)
            if batch.status == "validating" and batch_id not in self._cancelled:
                batch = await self._validate(batch)
            if batch.status == "in_progress":
                batch = await self._generate(batch)
            if batch.status in ("finalizing", "cancelling", "validating"):
                await self._finish(batch)
        except Exception as error:  # the batch fails; the app goes on
            logger.exception("batch %s failed", batch_id)
            batch = await asyncio.to_thread(self.store.get, batch_id)
            failure = BatchError(code="batch_failed", message=redact(str(error))[:1000])
            await asyncio.to_thread(
                self.store.save, batch.moved("failed", errors=BatchErrors(data=[failure]))
            )

    async def _validate(self, batch: BatchObject) -> BatchObject:
        source = self.store.files.content_location(batch.input_file_id)
        job = self.store.job_location(batch.id)
        vllm = bool(self._routes) and all(route.vllm_fields for route in self._routes.values())
        try:
            prepared = await asyncio.to_thread(
                prepare, source, job, vllm_fields=vllm, urls=(batch.endpoint,)
            )
        except BatchInputError as error:
            failed = batch.moved(
                "failed",
                errors=BatchErrors(data=[BatchError(code="invalid_file", message=str(error))]),
            )
            await asyncio.to_thread(self.store.save, failed)
            return failed
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
            request_counts=counts,
            errors=BatchErrors(data=errors) if errors else None,
        )
        await asyncio.to_thread(self.store.save, moved)
        return moved

    async def _generate(self, batch: BatchObject) -> BatchObject:
        import pyarrow.parquet as pq

        from rig_ray.batch.openai_files import REQUESTS_FILE, meta_path

        job = self.store.job_location(batch.id)
        folder = OutputFolder(job)
        filesystem, requests_path = meta_path(job, REQUESTS_FILE)
        table = await asyncio.to_thread(pq.read_table, requests_path, filesystem=filesystem)
        finished = (await asyncio.to_thread(folder.scan)).finished(retry_failed=False)
        pending = [
            row for row in table.to_pylist() if finished.get(row["id"], 0) != (1 << row["n"]) - 1
        ]
        invalid = len(await asyncio.to_thread(read_invalid, job))
        counts = _Counts(batch, len(table) - len(pending), invalid)
        writer = folder.writer(rows_per_part=64, seconds_per_part=_SAVE_EVERY_S)
        slots = self._slots = self._slots or asyncio.Semaphore(self._max_in_flight)
        running: set[asyncio.Task[None]] = set()

        async def one(row: dict[str, t.Any]) -> None:
            try:
                rows = await self._call(batch.id, row)
            finally:
                slots.release()
            writer.add(rows)
            counts.add(rows)

        try:
            for row in pending:
                await slots.acquire()
                if batch.id in self._cancelled:
                    slots.release()
                    break
                task = asyncio.get_running_loop().create_task(one(row))
                running.add(task)
                task.add_done_callback(running.discard)
                batch = await self._progress(batch, counts, writer)
            while running and batch.id not in self._cancelled:
                await asyncio.wait(set(running), timeout=_SAVE_EVERY_S)
                batch = await self._progress(batch, counts, writer)
        finally:
            for task in running:
                task.cancel()  # lines still in flight at a cancel are not made
            await asyncio.gather(*running, return_exceptions=True)
            writer.flush()
        status: Status = "cancelling" if batch.id in self._cancelled else "finalizing"
        moved = batch.moved(status, request_counts=counts.value())
        await asyncio.to_thread(self.store.save, moved)
        return moved

    async def _progress(self, batch: BatchObject, counts: _Counts, writer: t.Any) -> BatchObject:
        """Save the counts every few seconds (the parts are written as often)."""
        if time.monotonic() - counts.saved < _SAVE_EVERY_S:
            return batch
        counts.saved = time.monotonic()
        if writer.overdue():
            await asyncio.to_thread(writer.flush)
        latest = await asyncio.to_thread(self.store.get, batch.id)
        if latest.status == "cancelling":  # cancelled by another replica of the ingress
            self._cancelled.add(batch.id)
            return latest
        moved = batch.model_copy(update={"request_counts": counts.value()})
        await asyncio.to_thread(self.store.save, moved)
        return moved

    async def _call(self, batch_id: str, row: dict[str, t.Any]) -> pa.Table:
        """One line through its model's deployment: its n output rows (failed or not)."""
        started = time.perf_counter()
        name, results = row["request_model"], []
        try:
            route = self._routes.get(name)
            if route is None and len(self._routes) == 1:  # one model: any name is taken
                name, route = next(iter(self._routes.items()))
            params = GenerateParams.model_validate_json(row["params"])
            self._check(name, params)
            assert route is not None  # check() refused an unknown model
            request_id = f"{batch_id}-{uuid.uuid4().hex[:12]}"
            results = await _send(route, request_id, row, params)
        except ServeRequestError as error:
            results = [error] * row["n"]
        except Exception as error:  # the call failed as a whole: every generation gets it
            results = [error] * row["n"]
        return _rows(row, name, results, time.perf_counter() - started)

    async def _finish(self, batch: BatchObject) -> None:
        files = self.store.files
        output_id, errors_id = files.new_id(), files.new_id()
        for file_id in (output_id, errors_id):
            files.filesystem.create_dir(files.folder(file_id), recursive=True)
        job = self.store.job_location(batch.id)
        if await asyncio.to_thread(_prepared, job):
            summary = await asyncio.to_thread(
                export_openai,
                job,
                files.content_location(output_id),
                files.content_location(errors_id),
            )
            lines = summary.output_lines, summary.error_lines
        else:  # cancelled before its lines were read
            lines = (0, 0)
        kept: list[str | None] = []
        for file_id, count, kind in zip(
            (output_id, errors_id), lines, ("output", "errors"), strict=True
        ):
            if count:
                size = files.filesystem.get_file_info(f"{files.folder(file_id)}/content.jsonl")
                await asyncio.to_thread(
                    files.record, file_id, f"{batch.id}_{kind}.jsonl", "batch_output", size.size
                )
                kept.append(file_id)
            else:
                files.filesystem.delete_dir(files.folder(file_id))
                kept.append(None)
        counts = batch.request_counts.model_copy(update={"completed": lines[0], "failed": lines[1]})
        status: Status = (
            "cancelled"
            if batch.status == "cancelling" or batch.id in self._cancelled
            else "completed"
        )
        if status == "completed":
            await asyncio.to_thread(self.store.save, batch.moved("finalizing"))
        done = batch.moved(
            status, output_file_id=kept[0], error_file_id=kept[1], request_counts=counts
        )
        await asyncio.to_thread(self.store.save, done)
        self._cancelled.discard(batch.id)


def default_storage() -> str:
    """Where files and batches are kept unless `--batch-storage` says: under RIG_RAY_CACHE."""
    from rig_ray.embedded import cache_dir

    return str(cache_dir() / "batch-storage")


def batch_runner(
    storage: str | None,
    routes: dict[str, Route],
    check: t.Callable[[str, GenerateParams], None],
    *,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
) -> BatchRunner:
    """The runner of the batches (and the store of the files) under `storage`."""
    from rig_ray.serve.files import FileStore

    store = BatchStore(FileStore(storage or default_storage()))
    return BatchRunner(store, routes, check, max_in_flight=max_in_flight)


class _Counts:
    """Lines done so far, as the batch object shows them while it runs (the final counts are
    those of the output and error files)."""

    def __init__(self, batch: BatchObject, completed: int, failed: int) -> None:
        self.base = batch.request_counts
        self.completed, self.failed = completed, failed
        self.saved = time.monotonic()

    def add(self, rows: pa.Table) -> None:
        if rows.column("error").null_count == rows.num_rows:
            self.completed += 1
        else:
            self.failed += 1

    def value(self) -> RequestCounts:
        return self.base.model_copy(update={"completed": self.completed, "failed": self.failed})


async def _send(
    route: Route, request_id: str, row: dict[str, t.Any], params: GenerateParams
) -> list[t.Any]:
    """The line's results from its deployment; a full deployment (backpressure) is waited
    for and asked again, as a batch has time and online requests go first."""
    from ray.serve.exceptions import BackPressureError

    wait = 0.2
    while True:
        if row["url"] == COMPLETIONS_URL:
            call = route.handle.complete.remote(request_id, [row["prompt"]], params, row["n"])
        else:
            messages = [Message.fit(_without_nulls(m)) for m in row["messages"]]
            call = route.handle.chat.remote(request_id, messages, params, row["n"])
        try:
            return list(await call)
        except BackPressureError:
            await asyncio.sleep(wait)
            wait = min(wait * 2, 5.0)
        except asyncio.CancelledError:
            call.cancel()
            raise


def _prepared(job: str) -> bool:
    from rig_ray.batch.openai_files import is_prepared

    return is_prepared(job)


def _rows(row: dict[str, t.Any], served: str, results: list[t.Any], latency: float) -> pa.Table:
    import pyarrow as pa

    from rig_ray.batch.schema import OUTPUT_SCHEMA

    out = []
    for index, result in enumerate(results):
        ok = not isinstance(result, BaseException)
        usage = getattr(result, "usage", None) if ok else None
        error = None if ok else _error_text(result)
        out.append(
            {
                "id": row["id"],
                "generation_index": index,
                "generator": served,
                "model": served,
                "text": result.text if ok else None,
                "stop_reason": result.stop_reason if ok else None,
                "input_tokens": usage.input_tokens if usage else None,
                "output_tokens": usage.output_tokens if usage else None,
                "latency_s": latency,
                "error": error,
                "metadata": None,
            }
        )
    return pa.Table.from_pylist(out, schema=OUTPUT_SCHEMA)


def _error_text(error: BaseException) -> str:
    text = redact(" ".join(str(error).split()))
    if isinstance(error, ServeRequestError):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _without_nulls(item: t.Any) -> t.Any:
    if isinstance(item, t.Mapping):
        return {key: value for key, value in item.items() if value is not None}
    return item
