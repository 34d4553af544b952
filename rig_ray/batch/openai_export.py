"""`export_openai`: a batch job's Parquet output as OpenAI batch output and error files.

Each finished request becomes a line `{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}`, its body the `chat.completion` the endpoint would have
returned (built by `rig_ray.serve.wire`), with one choice per generation when the line asked for
`n > 1`. Requests whose generation failed, and lines that could not run, go to the error file.
Lines come in input order; requests not finished yet are in neither file, so a partial folder
exports what it has.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import secrets
import typing as t

from rig_ray.batch.openai_files import REQUESTS_FILE, job_info, meta_path, read_invalid
from rig_ray.batch.openai_lines import COMPLETIONS_URL, InvalidLine
from rig_ray.batch.source import open_filesystem
from rig_ray.errors import BatchInputError

if t.TYPE_CHECKING:
    import pyarrow as pa

OUTPUT_FILE = "output.jsonl"
ERRORS_FILE = "errors.jsonl"
_REQUEST_COLUMNS = ["id", "line", "url", "request_model", "n", "prompt", "echo"]
_GENERATION_COLUMNS = [
    "id",
    "generation_index",
    "text",
    "stop_reason",
    "input_tokens",
    "output_tokens",
    "error",
]


class ExportSummary(t.NamedTuple):
    output_lines: int
    error_lines: int


def export_openai(folder: str, output_jsonl: str, errors_jsonl: str) -> ExportSummary:
    """Write the OpenAI output and error files of the batch job in `folder` (finished or not)
    to `output_jsonl` and `errors_jsonl` (local paths or URIs)."""
    import pyarrow.parquet as pq

    filesystem, requests_path = meta_path(folder, REQUESTS_FILE)
    try:
        requests = pq.read_table(requests_path, columns=_REQUEST_COLUMNS, filesystem=filesystem)
    except (FileNotFoundError, OSError) as error:
        raise BatchInputError(
            f"{folder!r} holds no OpenAI batch job (no {REQUESTS_FILE}; was its input an OpenAI "
            "batch file?)",
            source=folder,
        ) from error
    info = job_info(folder)
    token, created = str(info["token"]), int(info["created"])
    requests = requests.sort_by("line")
    generations = _generations(folder, requests)

    def results() -> t.Iterator[tuple[int, str, dict[str, t.Any]]]:  # in input order
        for request, rows in _requests_with_rows(requests, generations):
            wanted = [rows.get(index) for index in range(request["n"])]
            if any(row is None for row in wanted):
                continue  # not finished yet
            done = t.cast(list[dict[str, t.Any]], wanted)
            kind, line = _result_line(token, created, request, done)
            yield request["line"], kind, line

    invalid = sorted(read_invalid(folder), key=lambda line: line.line)
    failed = ((line.line, ERRORS_FILE, _invalid_line(token, line)) for line in invalid)
    counts = {OUTPUT_FILE: 0, ERRORS_FILE: 0}
    # Each line is written as it is made (none are held): the two kinds merged by input line.
    with _JsonlFile(output_jsonl) as outputs, _JsonlFile(errors_jsonl) as errors:
        for _, kind, line in heapq.merge(results(), failed, key=lambda item: item[0]):
            (outputs if kind == OUTPUT_FILE else errors).write(line)
            counts[kind] += 1
    return ExportSummary(counts[OUTPUT_FILE], counts[ERRORS_FILE])


def export_into_folder(folder: str) -> ExportSummary:
    """`export_openai` into `output.jsonl` and `errors.jsonl` beside the Parquet parts."""
    base = folder.rstrip("/")
    return export_openai(folder, f"{base}/{OUTPUT_FILE}", f"{base}/{ERRORS_FILE}")


def _generations(folder: str, requests: pa.Table) -> tuple[pa.Table, pa.Array] | None:
    """The output rows of the job's requests, with their request's input line (`_line`), and
    the order that sorts them by line and generation index; kept as Arrow columns (the rows
    are taken in that order a slice at a time, never copied whole)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from rig_ray.batch.output import OutputFolder

    output = OutputFolder(folder)
    tables = [
        pq.read_table(part, columns=_GENERATION_COLUMNS, filesystem=output.filesystem)
        for part in output.parts()
    ]
    if not tables:
        return None
    table = pa.concat_tables(tables, promote_options="permissive")
    position = pc.index_in(table["id"], value_set=requests["id"])
    table = table.append_column("_line", pc.take(requests["line"], position))
    keys = pa.table({"_line": table["_line"], "generation_index": table["generation_index"]})
    # rows of ids the job never had (no line) sort last and are left off
    order = pc.sort_indices(
        keys, sort_keys=[("_line", "ascending", "at_end"), ("generation_index", "ascending")]
    )
    return table, order.slice(0, len(table) - table["_line"].null_count)


def _requests_with_rows(
    requests: pa.Table, generations: tuple[pa.Table, pa.Array] | None
) -> t.Iterator[tuple[dict[str, t.Any], dict[int, dict[str, t.Any]]]]:
    """Each request (in input order) with its output rows by generation index: both are
    walked in line order together, a slice at a time, so only a slice is ever held as Python
    objects."""
    rows = _in_slices(*generations) if generations is not None else iter(())
    waiting = next(rows, None)
    for request in _in_slices(requests):
        found: dict[int, dict[str, t.Any]] = {}
        while waiting is not None and waiting["_line"] <= request["line"]:
            if waiting["_line"] == request["line"]:
                found.setdefault(waiting["generation_index"], waiting)
            waiting = next(rows, None)
        yield request, found


def _in_slices(
    table: pa.Table, order: pa.Array | None = None, rows: int = 1024
) -> t.Iterator[dict[str, t.Any]]:
    """The table's rows as dicts, in `order` (row indices) if given, a slice at a time."""
    if order is None:
        for batch in table.to_batches(max_chunksize=rows):
            yield from batch.to_pylist()
        return
    for start in range(0, len(order), rows):
        yield from table.take(order.slice(start, rows)).to_pylist()


def _ids(token: str, custom_id: str) -> tuple[str, str]:
    """The line's `id` and `request_id`: stable for the job and custom_id, unguessable."""
    digest = hashlib.sha256(f"{token}\0{custom_id}".encode()).hexdigest()
    return f"batch_req_{digest[:24]}", digest[24:56]


def _result_line(
    token: str, created: int, request: dict[str, t.Any], rows: list[dict[str, t.Any]]
) -> tuple[str, dict[str, t.Any]]:
    line_id, request_id = _ids(token, request["id"])
    failed = next((row for row in rows if row["error"] is not None), None)
    if failed is not None:
        error = {
            "message": failed["error"],
            "type": "server_error",
            "param": None,
            "code": "generation_failed",
        }
        body = {"error": error}
        response = {"status_code": 500, "request_id": request_id, "body": body}
        return ERRORS_FILE, _line(line_id, request["id"], response, None)
    response = {
        "status_code": 200,
        "request_id": request_id,
        "body": _body(request_id, created, request, rows),
    }
    return OUTPUT_FILE, _line(line_id, request["id"], response, None)


def _body(
    request_id: str, created: int, request: dict[str, t.Any], rows: list[dict[str, t.Any]]
) -> dict[str, t.Any]:
    """The reply the endpoint would have made, by its own builders."""
    from rig_ray.generator.base import GeneratedMessage, GeneratedText, Usage
    from rig_ray.message import Message
    from rig_ray.serve import wire

    def usage(row: dict[str, t.Any]) -> Usage | None:
        if row["input_tokens"] is None:
            return None
        return Usage(input_tokens=row["input_tokens"], output_tokens=row["output_tokens"] or 0)

    if request["url"] == COMPLETIONS_URL:
        texts = [
            GeneratedText(
                text=row["text"] or "",
                stop_reason=row["stop_reason"] or "unknown",
                usage=usage(row),
            )
            for row in rows
        ]
        asked = wire.CompletionRequest(
            model=request["request_model"],
            prompt=request["prompt"],
            n=request["n"],
            echo=bool(request["echo"]),
        )
        return wire.completion(f"cmpl-{request_id}", created, asked, texts).model_dump(mode="json")
    results = [
        GeneratedMessage(
            message=Message(role="assistant", content=row["text"] or ""),
            stop_reason=row["stop_reason"] or "unknown",
            usage=usage(row),
        )
        for row in rows
    ]
    reply = wire.chat_completion(
        f"chatcmpl-{request_id}", created, request["request_model"], results
    )
    return reply.model_dump(mode="json")


def _invalid_line(token: str, invalid: InvalidLine) -> dict[str, t.Any]:
    custom_id = invalid.custom_id
    line_id, _ = _ids(token, custom_id if custom_id is not None else f"\0line {invalid.line}")
    error: dict[str, t.Any] = {
        "code": invalid.code,
        "message": invalid.message,
        "param": invalid.param,
        "line": invalid.line,
    }
    return _line(line_id, custom_id, None, error)


def _line(
    line_id: str,
    custom_id: str | None,
    response: dict[str, t.Any] | None,
    error: dict[str, t.Any] | None,
) -> dict[str, t.Any]:
    return {"id": line_id, "custom_id": custom_id, "response": response, "error": error}


class _JsonlFile:
    """A JSONL file written whole or not at all: to a hidden name beside it, renamed to its
    own name when the block ends without an error (removed if it raised)."""

    def __init__(self, location: str) -> None:
        self._filesystem, path = open_filesystem(location)
        folder, _, name = path.rpartition("/")
        if folder:
            self._filesystem.create_dir(folder, recursive=True)
        self._path = path
        self._temporary = f"{folder}/.tmp-{secrets.token_hex(6)}-{name}"
        self._stream: t.Any = None

    def __enter__(self) -> _JsonlFile:
        self._stream = self._filesystem.open_output_stream(self._temporary)
        return self

    def write(self, line: dict[str, t.Any]) -> None:
        self._stream.write((json.dumps(line, ensure_ascii=False) + "\n").encode())

    def __exit__(self, kind: t.Any, error: t.Any, trace: t.Any) -> None:
        self._stream.close()
        if kind is None:
            self._filesystem.move(self._temporary, self._path)
        else:
            self._filesystem.delete_file(self._temporary)
