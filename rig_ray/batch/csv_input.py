"""Reading CSV input: one read task per file; a file of up to `WHOLE_BYTES` read whole, its
column types inferred over all of its rows, a larger one streamed.

Ray Data's own CSV reader streams every file and infers each column's type from its first
block (1 MiB): a column of whole numbers there that holds `2.5` or a word further down, or
a cell further down that is not UTF-8, failed the whole job with "Failed to read CSV file".
pyarrow's whole-file reader widens a column as it goes instead (whole numbers, then
decimals, then text; text that is not UTF-8: binary, which a template writes as the text it
holds, failing only the rows whose cell is not UTF-8), but holds about four times the file
in memory. So a file of up to `WHOLE_BYTES` (a compressed one: `WHOLE_BYTES / 4` on disk)
is read whole, and a larger one is streamed: read through once for its types, widened by
the same steps wherever a cell further down does not fit, then again for its rows. Either way
the rows are handed on in blocks of `ROWS_PER_BLOCK`.
"""

from __future__ import annotations

import functools
import re
import typing as t

from rig_ray.batch.data_tasks import FileRead, read_files
from rig_ray.batch.json_values import ROWS_PER_BLOCK
from rig_ray.errors import BatchInputError
from rig_ray.redaction import redact

if t.TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs
    import ray.data


def read_csv(
    filesystem: pafs.FileSystem, files: list[str], id_column: str, args: dict[str, t.Any]
) -> ray.data.Dataset:
    """A lazy dataset of the rows of the CSV `files`, a read task per file; `args`: the
    tasks' remote args."""
    reads = []
    for info in filesystem.get_file_info(files):
        read = functools.partial(csv_tables, filesystem, info.path, id_column, info.size)
        reads.append(FileRead(read, info.path, info.size))
    return read_files("ReadCSV", reads, args)


WHOLE_BYTES = 64 << 20
"""The largest CSV file (uncompressed) read whole, its types inferred over all its rows."""
STREAM_BLOCK_BYTES = 16 << 20
"""The first bytes of a larger file, whose rows give each column its type."""


def csv_tables(
    filesystem: pafs.FileSystem,
    path: str,
    id_column: str,
    size: int | None = None,
    whole_bytes: int = WHOLE_BYTES,
) -> t.Iterator[pa.Table]:
    """The rows of one CSV file (decompressed by its ending, `size` bytes on disk where
    known), its `id_column` as text, in tables of `ROWS_PER_BLOCK` rows; `BatchInputError`
    naming the file where it is not CSV (see the module's text)."""
    packed = path.lower().endswith(".gz")
    if size is not None and size * (4 if packed else 1) <= whole_bytes:
        tables: t.Iterable[pa.Table] = [read_table(filesystem, path, id_column)]
    else:
        tables = _streamed(filesystem, path, id_column)
    any_rows, header_only = False, None
    for table in tables:
        if table.num_rows == 0:
            header_only = table
            continue
        any_rows = True
        for start in range(0, table.num_rows, ROWS_PER_BLOCK):
            yield table.slice(start, ROWS_PER_BLOCK)
    if not any_rows and header_only is not None:  # no rows, but the header's columns
        yield header_only


def csv_columns(filesystem: pafs.FileSystem, path: str) -> list[str]:
    """A CSV file's column names, as the reading of its first block gives them."""
    import pyarrow.csv as pacsv

    def names(block: int) -> list[str]:
        with filesystem.open_input_stream(path, compression="detect") as stream:
            return list(_reader(stream, path, block, pacsv.ConvertOptions()).schema.names)

    return _grown(names, BLOCK_BYTES)[0]


def read_table(filesystem: pafs.FileSystem, path: str, id_column: str) -> pa.Table:
    """One CSV file as one table, its types inferred over all its rows (read in blocks of
    `BLOCK_BYTES`, twice as large while a row is larger)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def table(block: int) -> pa.Table:
        with filesystem.open_input_stream(path, compression="detect") as stream:
            return pacsv.read_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=False, block_size=block),
                parse_options=_parse_options(path),
                convert_options=_convert(id_column),
            )

    try:
        return _grown(table, BLOCK_BYTES)[0]
    except pa.ArrowInvalid as error:
        raise _refusal(path, error, _header(filesystem, path)) from None


_R = t.TypeVar("_R")


def _grown(read: t.Callable[[int], _R], block: int) -> tuple[_R, int]:
    """`read(block)`, and the block it took: tried again with blocks twice as large while
    pyarrow finds a row larger than a block."""
    import pyarrow as pa

    while True:
        try:
            return read(block), block
        except pa.ArrowInvalid as error:
            if _STRADDLES not in str(error):
                raise
            block *= 2


def _streamed(filesystem: pafs.FileSystem, path: str, id_column: str) -> t.Iterator[pa.Table]:
    """A larger file's rows as it reads them, in blocks of `BLOCK_BYTES` (or of the largest
    row), which hold the task's memory flat (blocks of 16 MiB grew it with the file: 415 MiB
    for 547 MiB). Each column has the type of all its rows, found before any row is handed
    on (`_layout`)."""
    import pyarrow as pa

    try:
        types, block = _layout(filesystem, path, id_column)
        with filesystem.open_input_stream(path, compression="detect") as stream:
            for batch in _reader(stream, path, block, _typed(types)):
                yield pa.Table.from_batches([batch])
    except pa.ArrowInvalid as error:
        raise _refusal(path, error, _header(filesystem, path)) from None


BLOCK_BYTES = 1 << 20
"""The bytes a streamed file is read in: twice as many while a row is larger."""


def _layout(
    filesystem: pafs.FileSystem, path: str, id_column: str
) -> tuple[dict[str, pa.DataType], int]:
    """The type of each column of a larger file over all its rows, as a whole read infers
    it, and the block size that holds its largest row. The types of its first
    `STREAM_BLOCK_BYTES` first; then the file read through (rows dropped as read), and read
    again from its start wherever a cell does not fit its column's type (the column moved
    one step along `_next_type`) or a row does not fit a block (the blocks made twice as
    large). The id column stays text, as a whole read keeps it."""
    import pyarrow as pa

    def first_block(size: int) -> pa.Schema:
        with filesystem.open_input_stream(path, compression="detect") as stream:
            return _reader(stream, path, size, _convert(id_column)).schema

    def read_through(types: dict[str, pa.DataType], size: int) -> None:
        with filesystem.open_input_stream(path, compression="detect") as stream:
            for _ in _reader(stream, path, size, _typed(types)):
                pass

    schema, _ = _grown(first_block, STREAM_BLOCK_BYTES)
    names, types, block = schema.names, {field.name: field.type for field in schema}, BLOCK_BYTES
    while True:
        try:
            _, block = _grown(functools.partial(read_through, types), block)
            return types, block
        except pa.ArrowInvalid as error:
            found = _COLUMN.search(str(error))
            if found is None or "conversion error" not in str(error):
                raise
            name = names[int(found.group(1))]
            value = _VALUE.search(str(error))
            zoned = value is not None and _ZONE.search(value.group(1)) is not None
            wider = None if name == id_column else _next_type(types[name], zoned)
            if wider is None:
                raise
            types = {**types, name: wider}


_STRADDLES = "straddling object straddles two block boundaries"
"""pyarrow's error for a row larger than a block."""


def _typed(types: dict[str, pa.DataType]) -> t.Any:
    """pyarrow's CSV convert options that give each column its type."""
    import pyarrow.csv as pacsv

    return pacsv.ConvertOptions(column_types=types)


def _reader(stream: t.Any, path: str, block: int, convert: t.Any) -> t.Any:
    """pyarrow's streaming CSV reader over `stream` (of the file `path`), in blocks of
    `block` bytes."""
    import pyarrow.csv as pacsv

    return pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(use_threads=False, block_size=block),
        parse_options=_parse_options(path),
        convert_options=convert,
    )


def _next_type(now: pa.DataType, zoned: bool) -> pa.DataType | None:
    """The type after `now` in the order pyarrow's CSV reader tries when it infers a
    column's type (none, whole numbers, booleans, decimals, dates, times, timestamps in
    seconds, then in nanoseconds, text, binary); None after binary. Timestamps are in UTC
    where the cell that did not fit (`zoned`) names a zone, as pyarrow takes the zone from
    the first cell it reads as one."""
    import pyarrow as pa

    if pa.types.is_timestamp(now):
        return pa.timestamp("ns", now.tz) if now.unit == "s" else pa.string()
    order = [
        pa.null(),
        pa.int64(),
        pa.bool_(),
        pa.float64(),
        pa.date32(),
        pa.time32("s"),
        pa.timestamp("s", "UTC" if zoned else None),
        pa.string(),
        pa.binary(),
    ]
    at = order.index(now) if now in order else order.index(pa.string())
    return order[at + 1] if at + 1 < len(order) else None


def _header(filesystem: pafs.FileSystem, path: str) -> list[str] | None:
    """The column names of a file's first line, to name a column in an error; None where
    they cannot be read."""
    import csv

    try:
        with filesystem.open_input_stream(path, compression="detect") as stream:
            head = stream.read(1 << 16)
        line = head.split(b"\n", 1)[0].decode("utf-8-sig", "replace")
        return next(csv.reader([line], delimiter=_delimiter(path)))
    except Exception:  # the error it is for says what is wrong
        return None


def _parse_options(path: str) -> t.Any:
    import pyarrow.csv as pacsv

    return pacsv.ParseOptions(newlines_in_values=True, delimiter=_delimiter(path))


def _delimiter(path: str) -> str:
    """A tab for a `.tsv` file, else a comma."""
    return "\t" if path.lower().removesuffix(".gz").endswith(".tsv") else ","


def _convert(id_column: str) -> t.Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    return pacsv.ConvertOptions(column_types={id_column: pa.string()})


def _refusal(path: str, error: BaseException, names: list[str] | None) -> BatchInputError:
    """The error of a file that pyarrow cannot read: its first line, with the column's name
    where pyarrow gives its number, and for a streamed file what to do."""
    reason = " ".join((str(error).strip().splitlines() or [""])[0].split())
    column = None
    found = _COLUMN.search(reason)
    if found is not None and names is not None and int(found.group(1)) < len(names):
        column = names[int(found.group(1))]
        reason = f"column {column!r}: {reason[found.end() :].lstrip(': ')}"
    return BatchInputError(f"CSV file {redact(path)!r}: {reason}", source=path, column=column)


_COLUMN = re.compile(r"In CSV column #(\d+)")
_VALUE = re.compile(r"invalid value '(.*)'$", re.DOTALL)
_ZONE = re.compile(r"\d:\d\d(:\d\d(\.\d*)?)?(Z|[+-]\d\d(:?\d\d)?)$")
"""A time of day followed by a zone, at the end of a cell."""
