"""OpenAI batch files as batch job input: `{"custom_id", "method", "url", "body"}` lines.

An input whose rows have `custom_id` and `body` (JSONL, or Parquet with those columns) is read
line by line into a prepared Parquet file inside the output folder (`_openai/requests.parquet`):
one row per valid line, with its `custom_id` as the row id, its conversation, and its params
from the body through the endpoint's own mapping (`rig_ray.serve.wire`). Lines that cannot run
(not JSON, an unknown `url`, a field the endpoint refuses) go to `_openai/invalid.jsonl` and the
job goes on. `rig_ray.batch.run` then runs the prepared file like any other
(`rig_ray.batch.openai_job` makes its options, and routes each line by its `body.model`), so
resume, `retry_failed` and the manifest work unchanged; `rig_ray.batch.openai_export` writes
the results back in OpenAI's shapes.
"""

from __future__ import annotations

import json
import secrets
import time
import typing as t

from rig_ray.batch.openai_lines import (
    MESSAGES_COLUMN,
    N_COLUMN,
    PARAMS_COLUMN,
    TEXT_COLUMN,
    URLS,
    InvalidLine,
    NotJson,
    prepared_row,
)
from rig_ray.batch.source import format_of, input_files, open_filesystem
from rig_ray.errors import BatchInputError
from rig_ray.serve.limits import RequestLimits

if t.TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

META_FOLDER = "_openai"
"""Inside the output folder: the prepared requests, the invalid lines and the job's token
(hidden from the Parquet parts by its `_`)."""
REQUESTS_FILE = "requests.parquet"
INVALID_FILE = "invalid.jsonl"
JOB_FILE = "job.json"
_CHUNK = 10_000
_LIMITS = RequestLimits()
"""The endpoint's default caps, which every line gets."""


class Prepared(t.NamedTuple):
    """A prepared batch file: where its rows are, and the generations its largest `n` asks."""

    requests: str
    num_generations: int
    valid: int
    invalid: int


def prepared_options(num_generations: int) -> dict[str, t.Any]:
    """The `batch.run` options that read a prepared batch file: its columns, each line's own
    `n` (at most `num_generations`), and seeds as the endpoint seeds a request's choices (a
    line's seed gives what the same request to the endpoint gives). `rig-ray batch` and
    `/v1/batches` jobs both run with them."""
    return {
        "messages_column": MESSAGES_COLUMN,
        "params_column": PARAMS_COLUMN,
        "text_column": TEXT_COLUMN,
        "num_generations": num_generations,
        "generations_column": N_COLUMN,
        "seeds": "request",
    }


def is_openai_batch(source: str) -> bool:
    """Whether `source`'s first file reads as an OpenAI batch file (rows with `custom_id` and
    `body`). In JSON Lines, any such line in the first MiB makes it one: lines before it that
    are not (not JSON, or an object without them) are the file's error lines."""
    filesystem, files = input_files(source)
    kind = format_of(files[0])
    if kind == "parquet":
        import pyarrow.parquet as pq

        with filesystem.open_input_file(files[0]) as handle:
            names = set(pq.read_schema(handle).names)
        return {"custom_id", "body"} <= names
    if kind != "json" or files[0].lower().endswith(".gz"):
        return False
    with filesystem.open_input_stream(files[0]) as stream:
        read = 0
        for text in _text_lines(stream):  # whole lines, however long: a line may hold a book
            read += len(text) + 1
            if '"custom_id"' in text and _a_request(text):
                return True
            if read >= 1 << 20:
                break
    return False


def _a_request(text: str) -> bool:
    try:
        row = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(row, dict) and "custom_id" in row and "body" in row


def is_prepared(output: str) -> bool:
    """Whether `prepare` has run in the output folder."""
    filesystem, path = meta_path(output, REQUESTS_FILE)
    return not _missing(filesystem, path)


def meta_path(folder: str, name: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of `name` in the output folder's `_openai` folder."""
    filesystem, path = open_filesystem(folder)
    return filesystem, f"{path.rstrip('/')}/{META_FOLDER}/{name}"


def requests_location(folder: str) -> str:
    """The prepared requests file of the output folder, as a path or, for a URI, a URI."""
    if "://" in folder:
        return f"{folder.rstrip('/')}/{META_FOLDER}/{REQUESTS_FILE}"
    return meta_path(folder, REQUESTS_FILE)[1]


def prepare(
    source: str,
    output: str,
    *,
    vllm_fields: bool | t.Mapping[str, bool],
    urls: t.Sequence[str] = URLS,
    limits: RequestLimits | None = None,
) -> Prepared:
    """Read the batch file `source` into the output folder's `_openai` folder.

    A `custom_id` used twice refuses the whole file (OpenAI requires them unique), naming it
    and its lines. `vllm_fields`: whether the generator takes vLLM's extra sampling fields;
    or, where `body.model` chooses among several, each served name and whether its generator
    takes them (a line naming another model is refused as `model_not_found`); `urls`: the
    endpoints lines may name (a batch of the endpoint runs one); `limits`: the caps on `n`,
    messages and stop strings of each line (the endpoint's, on `/v1/batches`; by default
    those of `rig-ray serve`'s defaults).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    filesystem, requests = meta_path(output, REQUESTS_FILE)
    folder = requests.rsplit("/", 1)[0]
    filesystem.create_dir(folder, recursive=True)
    _job_token(filesystem, folder)
    invalid: list[InvalidLine] = []
    seen: dict[str, int] = {}
    rows: list[dict[str, t.Any]] = []
    valid = most_n = 0
    temporary = f"{folder}/.tmp-{secrets.token_hex(6)}.parquet"
    schema = _schema()
    with pq.ParquetWriter(temporary, schema, filesystem=filesystem) as writer:
        for number, line in _lines(source):
            row = prepared_row(number, line, vllm_fields, tuple(urls), limits or _LIMITS)
            if isinstance(row, InvalidLine):
                invalid.append(row)
            custom_id = row.custom_id if isinstance(row, InvalidLine) else row["id"]
            if custom_id is not None:
                if custom_id in seen:
                    filesystem.delete_file(temporary)
                    raise BatchInputError(
                        f"custom_id {custom_id!r} is used on lines {seen[custom_id]} and "
                        f"{number}; every line needs its own custom_id",
                        source=source,
                        column="custom_id",
                    )
                seen[custom_id] = number
            if isinstance(row, dict):
                rows.append(row)
                valid += 1
                most_n = max(most_n, row["n"])
            if len(rows) >= _CHUNK:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                rows = []
        writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    filesystem.move(temporary, requests)
    _write_invalid(filesystem, f"{folder}/{INVALID_FILE}", invalid)
    return Prepared(requests, max(most_n, 1), valid, len(invalid))


def read_invalid(output: str) -> list[InvalidLine]:
    """The invalid lines `prepare` recorded in the output folder (none if it never ran)."""
    filesystem, path = meta_path(output, INVALID_FILE)
    if _missing(filesystem, path):
        return []
    with filesystem.open_input_stream(path) as stream:
        text = stream.read().decode()
    return [InvalidLine.model_validate_json(line) for line in text.split("\n") if line.strip()]


def job_info(output: str) -> dict[str, t.Any]:
    """The job's token and creation time, made by its first `prepare`."""
    filesystem, path = meta_path(output, JOB_FILE)
    with filesystem.open_input_stream(path) as stream:
        return t.cast(dict[str, t.Any], json.loads(stream.read()))


def _job_token(filesystem: pafs.FileSystem, folder: str) -> None:
    path = f"{folder}/{JOB_FILE}"
    if _missing(filesystem, path):
        info = {"token": secrets.token_hex(12), "created": int(time.time())}
        with filesystem.open_output_stream(path) as stream:
            stream.write(json.dumps(info).encode())


def _missing(filesystem: pafs.FileSystem, path: str) -> bool:
    import pyarrow.fs as pafs

    return bool(filesystem.get_file_info(path).type == pafs.FileType.NotFound)


def _write_invalid(filesystem: pafs.FileSystem, path: str, invalid: list[InvalidLine]) -> None:
    text = "".join(line.model_dump_json() + "\n" for line in invalid)
    with filesystem.open_output_stream(path) as stream:
        stream.write(text.encode())


def _schema() -> pa.Schema:
    import pyarrow as pa

    message = pa.struct(
        [
            pa.field("role", pa.string()),
            pa.field("content", pa.string()),
            pa.field("name", pa.string()),
            pa.field("tool_call_id", pa.string()),
        ]
    )
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("line", pa.int64()),
            pa.field("url", pa.string()),
            pa.field("request_model", pa.string()),
            pa.field(N_COLUMN, pa.int32()),
            pa.field(MESSAGES_COLUMN, pa.list_(message)),
            pa.field(PARAMS_COLUMN, pa.string()),
            pa.field(TEXT_COLUMN, pa.string()),
            pa.field("echo", pa.bool_()),
        ]
    )


# -- reading lines -------------------------------------------------------------------------


def _lines(source: str) -> t.Iterator[tuple[int, t.Any]]:
    """(1-based line number, the parsed line, or the `NotJson` text of one that is not)."""
    filesystem, files = input_files(source)
    number = 0
    for path in files:
        if format_of(path) == "parquet":
            import pyarrow.parquet as pq

            with filesystem.open_input_file(path) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=_CHUNK):
                    for record in batch.to_pylist():
                        number += 1
                        yield number, record
            continue
        with filesystem.open_input_stream(path) as stream:
            for raw in _text_lines(stream):
                number += 1
                if not raw.strip():
                    yield number, NotJson("an empty line")
                    continue
                try:
                    yield number, json.loads(raw)
                except RecursionError:
                    yield number, NotJson("not JSON that can be read (nested too deeply)")
                except ValueError as error:
                    yield number, NotJson(f"not JSON ({error})")


def _text_lines(stream: t.Any) -> t.Iterator[str]:
    """The lines of `stream`, read a MiB at a time; a line longer than that is joined once,
    from its pieces, when its end comes."""
    pieces: list[bytes] = []
    while chunk := stream.read(1 << 20):
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            line = b"".join([*pieces, chunk[start:end]]) if pieces else chunk[start:end]
            pieces = []
            yield line.decode("utf-8", errors="replace")
            start = end + 1
        if start < len(chunk):
            pieces.append(chunk[start:])
    rest = b"".join(pieces)
    if rest.strip():
        yield rest.decode("utf-8", errors="replace")
