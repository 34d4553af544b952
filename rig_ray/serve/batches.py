"""`/v1/batches`: OpenAI's batch objects, kept beside the files of `rig_ray.serve.files`.

A batch lives in `<storage>/batches/<id>/`: `batch.json` (the object clients see) and `job/`,
the batch job's output folder (prepared requests, Parquet parts), which is where its progress
is; `rig_ray.serve.batch_runner` runs it. Ids are random (`batch_` and 128 random bits).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
import typing as t

from fastapi import FastAPI, Request, Response  # at module level: FastAPI reads the annotations
from pydantic import BaseModel, Field, PrivateAttr

from rig_ray.batch.openai_lines import URLS
from rig_ray.errors import ServeRequestError
from rig_ray.serve.files import FileStore, not_found, write_whole

if t.TYPE_CHECKING:
    from rig_ray.serve.batch_runner import BatchRunner

Status = t.Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
RUNNING: tuple[Status, ...] = ("validating", "in_progress", "finalizing", "cancelling")
"""Statuses whose batch a (re)started app takes up."""
COMPLETION_WINDOWS = {"24h": 24 * 3600.0}
"""The completion windows a batch may ask for, in seconds."""
METADATA_KEYS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512
"""OpenAI's limits on a batch's metadata."""
_BATCH_ID = re.compile(r"^batch_[0-9a-f]{32}$")


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: t.Literal["list"] = "list"
    data: list[BatchError] = Field(default_factory=list)


class BatchObject(BaseModel):
    """OpenAI's batch object."""

    id: str
    object: t.Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: Status
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None
    model: str | None = None
    """The served model the batch runs on (set once its lines are read)."""
    _created_ns: int = PrivateAttr(0)
    """When it was made, in ns: orders the list (created_at is in whole seconds)."""

    def moved(self, status: Status, **fields: t.Any) -> BatchObject:
        """This batch in `status`, its `<status>_at` stamped now."""
        stamp = f"{status}_at"
        now = {stamp: int(time.time())} if stamp in BatchObject.model_fields else {}
        return self.model_copy(update={"status": status, **now, **fields})


class CreateBatch(BaseModel):
    """POST /v1/batches."""

    model_config = {"extra": "forbid"}

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


class BatchStore:
    """The batch objects under `<storage>/batches`. `window_s`, when set, replaces every
    completion window's length (for tests: a batch that expires in seconds)."""

    def __init__(self, files: FileStore, *, window_s: float | None = None) -> None:
        self.files = files
        self.filesystem, self.root = files.filesystem, f"{files.root}/batches"
        self.filesystem.create_dir(self.root, recursive=True)
        self.window_s = window_s

    def now(self) -> float:
        """The clock `created_at` and `expires_at` are read on."""
        return time.time()

    def folder(self, batch_id: str) -> str:
        if not _BATCH_ID.match(batch_id):
            raise not_found("batch", batch_id)
        return f"{self.root}/{batch_id}"

    def job_location(self, batch_id: str) -> str:
        """The batch job's output folder, as a path or URI."""
        self.folder(batch_id)
        return f"{self.files.location}/batches/{batch_id}/job"

    def new(self, request: CreateBatch) -> BatchObject:
        started = self.now()
        now = int(started)
        window = self.window_s
        if window is None:
            window = COMPLETION_WINDOWS[request.completion_window]
        batch = BatchObject(
            id=f"batch_{secrets.token_hex(16)}",
            endpoint=request.endpoint,
            input_file_id=request.input_file_id,
            completion_window=request.completion_window,
            status="validating",
            created_at=now,
            expires_at=int(started + window),
            metadata=request.metadata,
        )
        batch._created_ns = time.time_ns()
        self.filesystem.create_dir(self.folder(batch.id), recursive=True)
        self.save(batch)
        return batch

    def save(self, batch: BatchObject) -> None:
        """Write whole: to a temporary name, then renamed over the old object."""
        stored = {"batch": batch.model_dump(mode="json"), "created_ns": batch._created_ns}
        write_whole(self.filesystem, f"{self.folder(batch.id)}/batch.json", json.dumps(stored))

    def get(self, batch_id: str) -> BatchObject:
        try:
            with self.filesystem.open_input_stream(f"{self.folder(batch_id)}/batch.json") as s:
                stored = json.loads(s.read())
        except (FileNotFoundError, OSError):
            raise not_found("batch", batch_id) from None
        batch = BatchObject.model_validate(stored["batch"])
        batch._created_ns = int(stored.get("created_ns", 0))
        return batch

    def list(self) -> list[BatchObject]:
        """Newest first."""
        import pyarrow.fs as pafs

        found = []
        for info in self.filesystem.get_file_info(pafs.FileSelector(self.root)):
            if info.type == pafs.FileType.Directory and _BATCH_ID.match(info.base_name):
                try:
                    found.append(self.get(info.base_name))
                except ServeRequestError:
                    continue
        return sorted(found, key=lambda batch: (-batch._created_ns, batch.id))


def check_create(files: FileStore, request: CreateBatch) -> None:
    """400 / 404 for a batch that cannot be made, before anything is stored."""
    from rig_ray.serve.http_errors import bad_request

    if request.endpoint not in URLS:
        raise bad_request(f"endpoint: one of {', '.join(URLS)}", param="endpoint")
    if request.completion_window not in COMPLETION_WINDOWS:
        raise bad_request("completion_window: only '24h' is supported", param="completion_window")
    if request.metadata is not None:
        if len(request.metadata) > METADATA_KEYS:
            raise bad_request(f"metadata: at most {METADATA_KEYS} keys", param="metadata")
        if any(len(k) > METADATA_KEY_CHARS for k in request.metadata):
            raise bad_request(
                f"metadata: keys of at most {METADATA_KEY_CHARS} characters", param="metadata"
            )
        if any(len(v) > METADATA_VALUE_CHARS for v in request.metadata.values()):
            raise bad_request(
                f"metadata: values of at most {METADATA_VALUE_CHARS} characters", param="metadata"
            )
    if files.get(request.input_file_id).purpose != "batch":
        raise bad_request("input_file_id: not a file of purpose 'batch'", param="input_file_id")


def page(batches: list[BatchObject], after: str | None, limit: int) -> dict[str, t.Any]:
    """One page of the list, newest first, starting after the batch `after`."""
    if not 1 <= limit <= 100:
        from rig_ray.serve.http_errors import bad_request

        raise bad_request("limit: between 1 and 100", param="limit")
    start = 0
    if after is not None:
        ids = [batch.id for batch in batches]
        start = ids.index(after) + 1 if after in ids else len(ids)
    chosen = batches[start : start + limit]
    return {
        "object": "list",
        "data": [batch.model_dump() for batch in chosen],
        "first_id": chosen[0].id if chosen else None,
        "last_id": chosen[-1].id if chosen else None,
        "has_more": start + limit < len(batches),
    }


def add_batch_routes(app: FastAPI, runner: BatchRunner) -> None:
    """POST/GET /v1/batches, GET /v1/batches/{id}, POST /v1/batches/{id}/cancel."""
    from fastapi.responses import JSONResponse
    from pydantic import ValidationError

    from rig_ray.serve import http_errors

    store = runner.store

    async def guarded(work: t.Callable[[], t.Awaitable[dict[str, t.Any]]]) -> Response:
        async def run() -> Response:
            runner.start()
            return JSONResponse(await work())

        return t.cast(Response, await http_errors.guarded(run()))

    @app.post("/v1/batches")
    async def create_batch(request: Request) -> Response:
        async def work() -> dict[str, t.Any]:
            body = http_errors.parse_json(await request.body())
            try:
                asked = CreateBatch.model_validate(body)
            except ValidationError as error:
                raise http_errors.from_validation(error) from None
            await asyncio.to_thread(check_create, store.files, asked)
            batch = await asyncio.to_thread(store.new, asked)
            await runner.created(batch.id)
            return batch.model_dump()

        return await guarded(work)

    @app.get("/v1/batches")
    async def list_batches(after: str | None = None, limit: int = 20) -> Response:
        async def work() -> dict[str, t.Any]:
            return page(await asyncio.to_thread(store.list), after, limit)

        return await guarded(work)

    @app.get("/v1/batches/{batch_id}")
    async def retrieve_batch(batch_id: str) -> Response:
        async def work() -> dict[str, t.Any]:
            return (await asyncio.to_thread(store.get, batch_id)).model_dump()

        return await guarded(work)

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str) -> Response:
        async def work() -> dict[str, t.Any]:
            return (await runner.cancel(batch_id)).model_dump()

        return await guarded(work)
