"""Reading a batch job's prompts: JSONL, Parquet or CSV from a path, folder, glob or URI."""

from __future__ import annotations

import fnmatch
import json
import re
import typing as t

from rig_ray.batch.data_tasks import from_blocks, put_block, remote_args
from rig_ray.errors import BatchInputError
from rig_ray.redaction import redact

if t.TYPE_CHECKING:
    import pyarrow.fs as pafs
    import ray.data

FORMATS: dict[str, str] = {
    ".jsonl": "json",
    ".json": "json",
    ".jsonl.gz": "json",
    ".json.gz": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".csv.gz": "csv",
}
"""File endings read as input, and the format each is read as."""

_GLOB_CHARS = "*?["
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def open_filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a local path or URI, and the path inside it."""
    import pyarrow.fs as pafs

    shown = redact(location)
    scheme = _SCHEME.match(location)
    try:
        return pafs.FileSystem.from_uri(location)
    except (ValueError, TypeError) as error:  # a relative path, odd characters, or a scheme
        if scheme:
            raise BatchInputError(
                f"cannot open {shown!r}: no filesystem for the URI scheme {scheme.group(1)!r} "
                "(pyarrow opens file://, s3://, gs://, abfs:// and hdfs://; check the spelling)",
                source=shown,
            ) from error
        import os

        return pafs.LocalFileSystem(), os.path.abspath(location)
    except OSError as error:  # e.g. a cloud filesystem whose credentials are missing
        first = (str(error).strip().splitlines() or [""])[0]
        raise BatchInputError(f"cannot open {shown!r}: {redact(first)}", source=shown) from error


def format_of(path: str) -> str | None:
    """The format a file is read as, from its ending; None for files that are not input."""
    lowered = path.lower()
    for ending, kind in FORMATS.items():
        if lowered.endswith(ending):
            return kind
    return None


def input_files(source: str) -> tuple[pafs.FileSystem, list[str]]:
    """Every input file that `source` names: a file, a folder (searched recursively) or a glob.

    Raises `BatchInputError` when nothing matches, or when the files mix formats.
    """
    import pyarrow.fs as pafs

    filesystem, path = open_filesystem(source)
    if any(char in path for char in _GLOB_CHARS):
        base = path[: min(path.index(c) for c in _GLOB_CHARS if c in path)].rsplit("/", 1)[0]
        depth = path.count("/")  # `*` stays within one folder level, as in a shell
        infos = _listing(filesystem, base or "/", source)
        files = [
            info.path
            for info in infos
            if info.path.count("/") == depth
            and fnmatch.fnmatch(info.path, path)
            and not _hidden(info.path, base)
        ]
    else:
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise BatchInputError(f"input {source!r} does not exist", source=source)
        if info.type == pafs.FileType.Directory:
            files = [
                f.path
                for f in _listing(filesystem, path, source)
                if format_of(f.path) and not _hidden(f.path, path)
            ]
        else:
            files = [path]  # a file named outright is read, whatever its name
    files = sorted(files)
    if not files:
        raise BatchInputError(
            f"no input files in {source!r} (reading {', '.join(sorted(FORMATS))})", source=source
        )
    kinds = {format_of(f) for f in files}
    if None in kinds:
        odd = next(f for f in files if format_of(f) is None)
        raise BatchInputError(
            f"cannot tell the format of {odd!r}: input files end in {', '.join(sorted(FORMATS))}",
            source=source,
        )
    if len(kinds) > 1:
        raise BatchInputError(
            f"{source!r} mixes formats ({', '.join(sorted(t.cast(set[str], kinds)))}); "
            "give one kind of file",
            source=source,
        )
    return filesystem, files


def read_prompts(
    source: str, *, id_column: str = "id", data_cpus: float | None = None
) -> ray.data.Dataset:
    """A lazy Ray dataset of the rows of every input file that `source` names.

    The `id_column` is read as text, never through a number: CSV `007` stays `007`, a JSON
    `1.0` stays `1.0` and a 23-digit id keeps every digit. The other columns' types are
    inferred. The read tasks ask `data_cpus` each (see `rig_ray.batch.data_tasks`); with
    0, Parquet files are read by this process instead (Ray Data's Parquet reader samples the
    files in tasks of one CPU, whatever the read asks).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import ray.data

    filesystem, files = input_files(source)
    kind = format_of(files[0])
    args = remote_args(data_cpus)
    if kind == "parquet" and data_cpus == 0:
        return _parquet_here(filesystem, files)
    if kind == "parquet":
        return ray.data.read_parquet(files, filesystem=filesystem, **args)
    if kind == "csv":
        as_text = pacsv.ConvertOptions(column_types={id_column: pa.string()})
        return ray.data.read_csv(files, filesystem=filesystem, convert_options=as_text, **args)
    # Lines are parsed here (not by pyarrow, which reads every number as a number) so that
    # the id keeps the text it was written as. A file holding one JSON array works too.
    files_data = ray.data.read_binary_files(files, filesystem=filesystem, **args)
    return files_data.map_batches(
        _JsonRows(id_column), batch_size=1, batch_format="pyarrow", zero_copy_batch=True, **args
    )


def _parquet_here(filesystem: pafs.FileSystem, files: list[str]) -> ray.data.Dataset:
    """The Parquet `files` read by this process, a block per row group, into Ray's object
    store: a dataset that needs no task to exist."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    blocks = []
    for path in files:
        with filesystem.open_input_file(path) as handle:
            reader = pq.ParquetFile(handle)
            for group in range(reader.num_row_groups):
                blocks.append(put_block(reader.read_row_group(group)))
            if not reader.num_row_groups:
                blocks.append(put_block(pa.Table.from_batches([], schema=reader.schema_arrow)))
    return from_blocks(blocks)


ROWS_PER_BLOCK = 10_000
"""JSON rows turned into Arrow at a time: only that many are ever held as Python objects."""


class _JsonRows:
    """Turns a batch of one file's bytes into tables of its JSON rows, the id as text.

    The rows are parsed and turned into Arrow `ROWS_PER_BLOCK` at a time, so a large file
    costs about its own size again in Arrow, not the many times that as Python objects. The
    tables come out with one schema, every row's keys (a key a row lacks is null there), and
    each column's type widened to hold every row's value (an int and a float: a float).
    """

    def __init__(self, id_column: str) -> None:
        self._id_column = id_column

    def __call__(self, batch: t.Any) -> t.Iterator[t.Any]:
        import pyarrow as pa

        tables: list[pa.Table] = []
        rows: list[dict[str, t.Any]] = []
        for data in batch.column("bytes").to_pylist():
            for row in iter_json_rows(data, self._id_column):
                rows.append(row)
                if len(rows) == ROWS_PER_BLOCK:
                    tables.append(_table(rows, first=ROWS_PER_BLOCK * len(tables)))
                    rows = []
        if rows or not tables:  # an empty file is one empty table
            tables.append(_table(rows, first=ROWS_PER_BLOCK * len(tables)))
        whole = pa.concat_tables(tables, promote_options="permissive")
        parts = [part for part in whole.to_batches() if part.num_rows]
        yield from (pa.Table.from_batches([part]) for part in parts) if parts else [whole]


def _table(rows: list[dict[str, t.Any]], first: int) -> t.Any:
    """`rows` as a table of every key of theirs; `first`: how many rows came before."""
    import pyarrow as pa

    names = dict.fromkeys(name for row in rows for name in row)  # every row's keys
    try:
        return pa.Table.from_pydict({name: [row.get(name) for row in rows] for name in names})
    except UnicodeEncodeError:
        raise BatchInputError(_lone_surrogate(rows, first)) from None


def _lone_surrogate(rows: list[dict[str, t.Any]], first: int = 0) -> str:
    """Which row and column hold a string that is not valid Unicode (a lone UTF-16
    surrogate, from a `\\ud800` escape: valid JSON, but no Arrow string can hold it)."""
    for number, row in enumerate(rows, start=first + 1):
        for key, value in row.items():
            try:
                json.dumps({key: value}, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                return (
                    f"JSON row {number}: column {key!r} holds a lone UTF-16 surrogate (an "
                    "unpaired \\ud800-\\udfff escape), which is not valid Unicode"
                )
    return "a JSON row holds a string that is not valid Unicode"


class _Number(str):
    """A JSON number as written; turned into an int or float everywhere but in the id."""


def _decoded(decoder: json.JSONDecoder, text: str, where: str) -> t.Any:
    """`text` decoded, or a `BatchInputError` that names `where` it is."""
    try:
        return decoder.decode(text)
    except RecursionError:
        raise BatchInputError(f"{where} is nested too deeply to read") from None
    except ValueError as error:
        raise BatchInputError(f"{where} is not JSON ({error})") from None


def json_rows(data: bytes, id_column: str) -> list[dict[str, t.Any]]:
    """The objects of a JSON Lines file (or of one JSON array), with `id_column` as text."""
    return list(iter_json_rows(data, id_column))


_BOM = b"\xef\xbb\xbf"
_LEADING_SPACE = re.compile(rb"[ \t\r\n]*")


def iter_json_rows(data: bytes, id_column: str) -> t.Iterator[dict[str, t.Any]]:
    """`json_rows`, one row at a time: a JSON Lines file is read line by line, so only the
    row being made is held as Python objects (a JSON array is read whole)."""
    start = len(_BOM) if data.startswith(_BOM) else 0
    decoder = json.JSONDecoder(parse_int=_Number, parse_float=_Number)
    first = _LEADING_SPACE.match(data, start)
    at = first.end() if first is not None else start
    if data[at : at + 1] == b"[":
        text = _utf8(data[start:], 1)
        values = _decoded(decoder, text, "the JSON array")
        for number, value in enumerate(values):  # text opening with "[" is an array
            yield _row(value, number, id_column)
        return
    number = row = 0
    while start <= len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        number += 1
        text = _utf8(data[start:end], number)
        start = end + 1
        if text.strip():
            yield _row(_decoded(decoder, text, f"line {number}"), row, id_column)
            row += 1


def _utf8(data: bytes, line: int) -> str:
    """`data`, the text of a file from `line` on, decoded; a `BatchInputError` naming the
    line where it is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        at = line + data[: error.start].count(b"\n")
        raise BatchInputError(f"line {at} is not UTF-8 text ({error.reason})") from None


def _row(value: t.Any, number: int, id_column: str) -> dict[str, t.Any]:
    """A decoded JSON value as the row it must be (the `number`th, from 0), its numbers
    turned into ints and floats but the id, which keeps the text it was written as."""
    if not isinstance(value, dict):
        raise BatchInputError(f"JSON row {number + 1} is a {type(value).__name__}, not an object")
    row = {key: _numbers(item) for key, item in value.items()}
    raw = value.get(id_column)
    if isinstance(raw, _Number):
        row[id_column] = str.__str__(raw)
    elif isinstance(raw, bool):
        row[id_column] = json.dumps(raw)
    return row


def _numbers(value: t.Any) -> t.Any:
    if isinstance(value, _Number):
        written = str.__str__(value)
        return float(written) if any(c in written for c in ".eE") else int(written)
    if isinstance(value, dict):
        return {key: _numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_numbers(item) for item in value]
    return value


def _listing(filesystem: pafs.FileSystem, folder: str, source: str) -> list[pafs.FileInfo]:
    import pyarrow.fs as pafs

    try:
        infos = filesystem.get_file_info(pafs.FileSelector(folder, recursive=True))
    except (FileNotFoundError, OSError) as error:
        raise BatchInputError(f"cannot list {source!r}: {error}", source=source) from error
    return [info for info in infos if info.type == pafs.FileType.File]


def _hidden(path: str, base: str) -> bool:
    """Whether a file or any folder on its way from `base` is hidden (`.x`) or a by-product
    of other tools (`_x`, like Spark's `_temporary` and `_SUCCESS`)."""
    inside = path[len(base) :].strip("/") if path.startswith(base) else path
    return any(part.startswith((".", "_")) for part in inside.split("/"))
