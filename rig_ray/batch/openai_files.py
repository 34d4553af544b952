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

from pydantic import BaseModel, ConfigDict, ValidationError

from rig_ray.batch.source import format_of, input_files, open_filesystem
from rig_ray.errors import BatchInputError, ServeRequestError
from rig_ray.redaction import redact
from rig_ray.serve import wire
from rig_ray.serve.limits import RequestLimits, check_request

if t.TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
URLS = (CHAT_URL, COMPLETIONS_URL)
"""The endpoints a batch file's lines may name."""
META_FOLDER = "_openai"
"""Inside the output folder: the prepared requests, the invalid lines and the job's token
(hidden from the Parquet parts by its `_`)."""
REQUESTS_FILE = "requests.parquet"
INVALID_FILE = "invalid.jsonl"
JOB_FILE = "job.json"
MESSAGES_COLUMN = "messages"
PARAMS_COLUMN = "params"
TEXT_COLUMN = "prompt"
N_COLUMN = "n"
"""Each line's `n`: the job makes that many generations of it (`generations_column`)."""
_CHUNK = 10_000
_LIMITS = RequestLimits()
"""The endpoint's default caps, which every line gets."""


class InvalidLine(BaseModel):
    """A line that cannot run: its 1-based number, its custom_id if it had one, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    line: int
    custom_id: str | None
    code: str
    message: str
    param: str | None = None


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
        head = stream.read(1 << 20).decode("utf-8", errors="replace")
    for text in head.split("\n"):
        if '"custom_id"' not in text:
            continue
        try:
            row = json.loads(text)
        except (ValueError, RecursionError):
            continue
        if isinstance(row, dict) and "custom_id" in row and "body" in row:
            return True
    return False


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
            row = _row(number, line, vllm_fields, tuple(urls), limits or _LIMITS)
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
    """(1-based line number, the parsed line, or the `_NotJson` text of one that is not)."""
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
                    yield number, _NotJson("an empty line")
                    continue
                try:
                    yield number, json.loads(raw)
                except RecursionError:
                    yield number, _NotJson("not JSON that can be read (nested too deeply)")
                except ValueError as error:
                    yield number, _NotJson(f"not JSON ({error})")


class _NotJson(t.NamedTuple):
    why: str


def _text_lines(stream: t.Any) -> t.Iterator[str]:
    rest = b""
    while chunk := stream.read(1 << 20):
        rest += chunk
        *whole, rest = rest.split(b"\n")
        for line in whole:
            yield line.decode("utf-8", errors="replace")
    if rest.strip():
        yield rest.decode("utf-8", errors="replace")


def _row(
    number: int,
    line: t.Any,
    vllm_fields: bool | t.Mapping[str, bool],
    urls: tuple[str, ...],
    limits: RequestLimits,
) -> dict[str, t.Any] | InvalidLine:
    """The prepared row of one line, or why it cannot run."""

    def bad(message: str, code: str = "invalid_request", param: str | None = None) -> InvalidLine:
        return InvalidLine(
            line=number, custom_id=custom_id, code=code, message=redact(message), param=param
        )

    custom_id: str | None = None
    if isinstance(line, _NotJson):
        return bad(f"line {number}: {line.why}", code="invalid_json_line")
    if not isinstance(line, dict):
        return bad(f"line {number}: a {type(line).__name__}, not an object", "invalid_json_line")
    refused = _refused_json({key: value for key, value in line.items() if key != "body"})
    if refused is not None:  # before its custom_id is taken: it may be the string refused
        return bad(f"line {number}: {refused}", "invalid_json_line")
    if isinstance(line.get("custom_id"), str | int) and str(line["custom_id"]):
        custom_id = str(line["custom_id"])
    else:
        return bad(f"line {number}: custom_id: a non-empty string is required", param="custom_id")
    unknown = sorted(set(line) - {"custom_id", "method", "url", "body"})
    if unknown:
        return bad(f"line {number}: unknown key {unknown[0]!r}", param=unknown[0])
    if line.get("method", "POST") != "POST":
        return bad(f"line {number}: method: only POST is supported", param="method")
    url = line.get("url")
    if url not in urls:
        return bad(
            f"line {number}: url {url!r} is not one this batch runs ({', '.join(urls)})",
            code="invalid_url",
            param="url",
        )
    body = line.get("body")
    if isinstance(body, str):  # a body sent as a JSON string
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            return bad(f"line {number}: body: a JSON object is required", param="body")
    if not isinstance(body, dict):
        return bad(f"line {number}: body: an object is required", param="body")
    refused = _refused_json(body)
    if refused is not None:
        return bad(f"line {number}: body: {refused}", "invalid_json", "body")
    try:
        request = _request(body, chat=url == CHAT_URL)
        params = request.to_params()
        _check(request, params, _takes_vllm_fields(request.model, vllm_fields), limits)
    except _Refused as error:
        return bad(f"line {number}: {error.message}", error.code, error.param)
    row = {
        "id": custom_id,
        "line": number,
        "url": url,
        "request_model": request.model,
        N_COLUMN: request.n,
        PARAMS_COLUMN: params.model_dump_json(exclude_none=True, exclude_defaults=True),
    }
    if isinstance(request, wire.CompletionRequest):
        return {**row, TEXT_COLUMN: request.prompts[0], "echo": request.echo}
    messages = [
        {"role": m.role, "content": m.content, "name": m.name, "tool_call_id": m.tool_call_id}
        for m in request.to_messages()
    ]
    return {**row, MESSAGES_COLUMN: messages}


def _refused_json(value: t.Any) -> ServeRequestError | None:
    """Why the endpoint would refuse `value` as JSON (nested too deeply, or a string with a
    lone surrogate, which no UTF-8 file can hold), or None."""
    from rig_ray.serve.http_errors import check_tree

    try:
        check_tree(value)
    except ServeRequestError as refused:
        return refused
    return None


class _Refused(Exception):
    def __init__(self, message: str, code: str, param: str | None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


def _request(
    body: dict[str, t.Any], *, chat: bool
) -> wire.ChatCompletionRequest | wire.CompletionRequest:
    """The body read by the endpoint's own request model; `_Refused` as the endpoint's 400."""
    try:
        if chat:
            return wire.ChatCompletionRequest.model_validate(body)
        return wire.CompletionRequest.model_validate(body)
    except ValidationError as error:
        from rig_ray.serve.http_errors import from_validation

        refused = from_validation(error)
        raise _Refused(str(refused), refused.code or "invalid_value", refused.param) from None


def _check(
    request: wire.ChatCompletionRequest | wire.CompletionRequest,
    params: t.Any,
    vllm_fields: bool,
    limits: RequestLimits,
) -> None:
    """What the endpoint refuses before a request reaches a model, as it words it: its caps
    on messages, stop strings and `n` included."""
    if isinstance(request, wire.CompletionRequest) and len(request.prompts) != 1:
        raise _Refused("prompt: one prompt per batch line", "invalid_value", "prompt")
    try:
        check_request(request, limits)
    except ServeRequestError as refused:
        raise _Refused(str(refused), refused.code or "invalid_value", refused.param) from None
    if request.stream:
        raise _Refused("stream: not supported in a batch file", "unsupported_parameter", "stream")
    for name in wire.VLLM_FIELDS:
        if name in params.extra and not vllm_fields:
            raise _Refused(
                f"{name}: only vLLM generators take it, and the generator of this line is not one",
                "unsupported_parameter",
                name,
            )


def _takes_vllm_fields(model: str, vllm_fields: bool | t.Mapping[str, bool]) -> bool:
    """Whether the generator `model` names takes vLLM's fields; `_Refused` as the endpoint's
    404 when `vllm_fields` names the served models and `model` is none of them."""
    if isinstance(vllm_fields, bool):
        return vllm_fields
    if model not in vllm_fields:
        served = ", ".join(vllm_fields)
        raise _Refused(
            f"The model {model!r} does not exist (served: {served}).", "model_not_found", "model"
        )
    return vllm_fields[model]
