"""Reading CSV input: one read task per file; a file of up to `WHOLE_BYTES` read whole, its
column types inferred over all of its rows, a larger one streamed.

Ray Data's own CSV reader streams every file and infers each column's type from its first
block (1 MiB): a column of whole numbers there that holds `2.5` or a word further down, or
a cell further down that is not UTF-8, failed the whole job with "Failed to read CSV file".
pyarrow's whole-file reader widens a column as it goes instead (whole numbers, then
decimals, then text; text that is not UTF-8: binary, which a template writes as the text it
holds, failing only the rows whose cell is not UTF-8), but holds about four times the file
in memory. So a file of up to `WHOLE_BYTES` (a compressed one: `WHOLE_BYTES / 4` on disk)
is read whole, and a larger one is streamed with the types of its first `STREAM_BLOCK_BYTES`,
a cell further down that does not fit being a `BatchInputError` that names the file, the
column and the value. Either way the rows are handed on in blocks of `ROWS_PER_BLOCK`.
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


def read_table(filesystem: pafs.FileSystem, path: str, id_column: str) -> pa.Table:
    """One CSV file as one table, its types inferred over all its rows."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        with filesystem.open_input_stream(path, compression="detect") as stream:
            return pacsv.read_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=False),
                parse_options=_parse_options(),
                convert_options=_convert(id_column),
            )
    except pa.ArrowInvalid as error:
        raise _refusal(path, error, None) from None


def _streamed(filesystem: pafs.FileSystem, path: str, id_column: str) -> t.Iterator[pa.Table]:
    """A larger file's rows as it reads them: the types of its first `STREAM_BLOCK_BYTES`
    (a column empty there: text), then the file again in blocks of 1 MiB, which hold the
    task's memory flat (blocks of 16 MiB grew it with the file: 415 MiB for 547 MiB)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names: list[str] | None = None
    try:
        with filesystem.open_input_stream(path, compression="detect") as stream:
            first = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=False, block_size=STREAM_BLOCK_BYTES),
                parse_options=_parse_options(),
                convert_options=_convert(id_column),
            )
            names = first.schema.names
            types = {
                field.name: pa.string() if pa.types.is_null(field.type) else field.type
                for field in first.schema
            }
        with filesystem.open_input_stream(path, compression="detect") as stream:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 20),
                parse_options=_parse_options(),
                convert_options=pacsv.ConvertOptions(column_types=types),
            )
            for batch in reader:
                yield pa.Table.from_batches([batch])
    except pa.ArrowInvalid as error:
        raise _refusal(path, error, names) from None


def _parse_options() -> t.Any:
    import pyarrow.csv as pacsv

    return pacsv.ParseOptions(newlines_in_values=True)


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
        reason += (
            f" (a CSV file over {WHOLE_BYTES >> 20} MiB is streamed, each column keeping the "
            f"type of its first {STREAM_BLOCK_BYTES >> 20} MiB: give the column one type "
            "throughout, or split the file)"
        )
    return BatchInputError(f"CSV file {redact(path)!r}: {reason}", source=path, column=column)


_COLUMN = re.compile(r"In CSV column #(\d+)")
