"""`/v1/files`: OpenAI's file store, on a local folder or any pyarrow filesystem URI.

Each file lives in `<storage>/files/<id>/` as `content.jsonl` and `meta.json`. Ids are random
(`file-` and 128 random bits); an id that is not of that shape is refused before the storage is
touched, and the file name a client sends is only ever recorded, never used as a path. Every
holder of the endpoint's key sees every file.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
import typing as t

from fastapi import FastAPI, Request, Response  # at module level: FastAPI reads the annotations
from pydantic import BaseModel

from rig_ray.batch.source import open_filesystem
from rig_ray.errors import ServeRequestError

if t.TYPE_CHECKING:
    import pyarrow.fs as pafs

MAX_FILE_BYTES = 200 * 1024 * 1024
"""OpenAI's limit on one batch input file."""
MAX_REQUESTS = 50_000
"""OpenAI's limit on the requests of one batch file."""
PURPOSES = ("batch", "batch_output")
_FILE_ID = re.compile(r"^file-[0-9a-f]{32}$")
_CHUNK = 1 << 20


class FileObject(BaseModel):
    id: str
    object: t.Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    expires_at: int | None = None
    status_details: str | None = None


def write_whole(filesystem: pafs.FileSystem, path: str, text: str) -> None:
    """Write `text` to a temporary name beside `path`, then rename it over `path`: a reader
    (a list while a batch records its output file) sees the old file or the new, never half."""
    folder = path.rsplit("/", 1)[0]
    temporary = f"{folder}/.tmp-{secrets.token_hex(6)}.json"
    with filesystem.open_output_stream(temporary) as stream:
        stream.write(text.encode())
    filesystem.move(temporary, path)


def not_found(kind: str, item_id: str) -> ServeRequestError:
    shown = item_id if len(item_id) <= 64 else item_id[:64] + "..."
    return ServeRequestError(f"No such {kind}: {shown!r}", status_code=404, code="not_found")


class FileStore:
    """The files under `<location>/files`, and the root the batches share."""

    def __init__(self, location: str) -> None:
        self.location = location.rstrip("/")
        self.filesystem: pafs.FileSystem
        self.filesystem, self.root = open_filesystem(self.location)
        self.filesystem.create_dir(f"{self.root}/files", recursive=True)

    def folder(self, file_id: str) -> str:
        if not _FILE_ID.match(file_id):
            raise not_found("file", file_id)
        return f"{self.root}/files/{file_id}"

    def content_location(self, file_id: str) -> str:
        """The content's path or URI, as `open_filesystem` takes it."""
        self.folder(file_id)
        return f"{self.location}/files/{file_id}/content.jsonl"

    def new_id(self) -> str:
        return f"file-{secrets.token_hex(16)}"

    def create(self, filename: str, purpose: str, chunks: t.Iterable[bytes]) -> FileObject:
        file_id = self.new_id()
        folder = self.folder(file_id)
        self.filesystem.create_dir(folder, recursive=True)
        size = 0
        with self.filesystem.open_output_stream(f"{folder}/content.jsonl") as stream:
            for chunk in chunks:
                size += len(chunk)
                stream.write(chunk)
        return self.record(file_id, filename, purpose, size)

    def record(self, file_id: str, filename: str, purpose: str, size: int) -> FileObject:
        """Write the meta of a file whose content is in place."""
        name = filename.replace("\\", "/").rsplit("/", 1)[-1][:255] or "file"
        info = FileObject(
            id=file_id, bytes=size, created_at=int(time.time()), filename=name, purpose=purpose
        )
        write_whole(self.filesystem, f"{self.folder(file_id)}/meta.json", info.model_dump_json())
        return info

    def get(self, file_id: str) -> FileObject:
        try:
            with self.filesystem.open_input_stream(f"{self.folder(file_id)}/meta.json") as stream:
                return FileObject.model_validate_json(stream.read())
        except (FileNotFoundError, OSError):
            raise not_found("file", file_id) from None

    def read(self, file_id: str) -> bytes:
        self.get(file_id)
        with self.filesystem.open_input_stream(f"{self.folder(file_id)}/content.jsonl") as stream:
            return t.cast(bytes, stream.read())

    def list(self, purpose: str | None = None) -> list[FileObject]:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(f"{self.root}/files", recursive=False)
        found = []
        for info in self.filesystem.get_file_info(selector):
            if info.type == pafs.FileType.Directory and _FILE_ID.match(info.base_name):
                try:
                    item = self.get(info.base_name)
                except ServeRequestError:  # a file being written, or half deleted
                    continue
                if purpose is None or item.purpose == purpose:
                    found.append(item)
        return sorted(found, key=lambda item: (-item.created_at, item.id))

    def delete(self, file_id: str) -> dict[str, t.Any]:
        self.get(file_id)
        self.filesystem.delete_dir(self.folder(file_id))
        return {"id": file_id, "object": "file", "deleted": True}


async def _upload_chunks(upload: t.Any) -> list[bytes]:
    """The uploaded file's bytes, refused with 400 past `MAX_FILE_BYTES`."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await upload.read(_CHUNK):
        size += len(chunk)
        if size > MAX_FILE_BYTES:
            raise ServeRequestError(
                f"file: larger than the limit of {MAX_FILE_BYTES // (1024 * 1024)} MB per file",
                code="file_too_large",
                param="file",
            )
        chunks.append(chunk)
    return chunks


async def _form(request: Request) -> t.Any:
    """The upload's multipart form: a body that is not one (no boundary, cut short, more
    than one file or a handful of fields) is a 400 that says so."""
    from starlette.exceptions import HTTPException

    from rig_ray.serve.http_errors import bad_request

    try:
        return await request.form(max_files=1, max_fields=8)
    except HTTPException as refused:
        raise bad_request(
            f"file: the body is not a multipart form with one file and a purpose "
            f"({refused.detail})",
            param="file",
        ) from None


def _check_requests(chunks: list[bytes]) -> None:
    lines = sum(chunk.count(b"\n") for chunk in chunks)
    if chunks and not chunks[-1].endswith(b"\n"):
        lines += 1
    if lines > MAX_REQUESTS:
        raise ServeRequestError(
            f"file: {lines:,} lines, over the limit of {MAX_REQUESTS:,} requests per batch file",
            code="too_many_requests_in_file",
            param="file",
        )


def add_file_routes(app: FastAPI, store: FileStore) -> None:
    """POST/GET /v1/files, GET/DELETE /v1/files/{id}, GET /v1/files/{id}/content."""
    from fastapi.responses import JSONResponse

    from rig_ray.serve import http_errors

    # A body that is not a multipart form is the client's 400 (`_form`), not a warning of the
    # form parser's in the replica's log for each such upload.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)

    async def guarded(work: t.Callable[[], t.Awaitable[t.Any]]) -> Response:
        async def run() -> Response:
            result = await work()
            return result if isinstance(result, Response) else JSONResponse(result)

        return t.cast(Response, await http_errors.guarded(run()))

    @app.post("/v1/files")
    async def create_file(request: Request) -> Response:
        async def work() -> dict[str, t.Any]:
            form = await _form(request)
            upload, purpose = form.get("file"), form.get("purpose")
            if purpose != "batch":
                raise http_errors.bad_request("purpose: only 'batch' is taken", param="purpose")
            if upload is None or isinstance(upload, str):
                raise http_errors.bad_request("file: a file upload is required", param="file")
            chunks = await _upload_chunks(upload)
            _check_requests(chunks)
            name = upload.filename or "file"
            created = await asyncio.to_thread(store.create, name, "batch", chunks)
            return created.model_dump()

        return await guarded(work)

    @app.get("/v1/files")
    async def list_files(purpose: str | None = None) -> Response:
        async def work() -> dict[str, t.Any]:
            items = await asyncio.to_thread(store.list, purpose)
            return {"object": "list", "data": [i.model_dump() for i in items], "has_more": False}

        return await guarded(work)

    @app.get("/v1/files/{file_id}")
    async def retrieve_file(file_id: str) -> Response:
        async def work() -> dict[str, t.Any]:
            return (await asyncio.to_thread(store.get, file_id)).model_dump()

        return await guarded(work)

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str) -> Response:
        async def work() -> Response:
            data = await asyncio.to_thread(store.read, file_id)
            return Response(data, media_type="application/octet-stream")

        return await guarded(work)

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str) -> Response:
        async def work() -> dict[str, t.Any]:
            return await asyncio.to_thread(store.delete, file_id)

        return await guarded(work)
