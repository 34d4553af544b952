"""Reading CSV input: each file whole by one read task, its column types inferred over all
of its rows.

Ray Data's own CSV reader streams a file and infers each column's type from its first block
(about 1 MiB): a column of whole numbers there that holds `2.5` or a word further down, or
a cell further down that is not UTF-8, failed the whole job with "Failed to read CSV file".
pyarrow's whole-file reader widens a column as it goes instead (whole numbers, then
decimals, then text; text that is not UTF-8: binary, which a template writes as the text it
holds, failing only the rows whose cell is not UTF-8). The file's table is handed on in
blocks of `ROWS_PER_BLOCK` rows.
"""

from __future__ import annotations

import functools
import typing as t

from rig_ray.batch.json_input import ROWS_PER_BLOCK
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
    import ray.data
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    sizes = {info.path: info.size for info in filesystem.get_file_info(files)}

    class CsvSource(Datasource):  # type: ignore[misc]
        def get_name(self) -> str:
            return "ReadCSV"

        def estimate_inmemory_data_size(self) -> int | None:
            return sum(size or 0 for size in sizes.values()) or None

        def get_read_tasks(self, parallelism: int, *args: t.Any, **kwargs: t.Any) -> list[t.Any]:
            return [
                ReadTask(
                    functools.partial(csv_tables, filesystem, path, id_column),
                    BlockMetadata(
                        num_rows=None,
                        size_bytes=sizes.get(path),
                        input_files=(path,),
                        exec_stats=None,
                    ),
                )
                for path in files
            ]

    return ray.data.read_datasource(CsvSource(), **args)


def csv_tables(filesystem: pafs.FileSystem, path: str, id_column: str) -> t.Iterator[pa.Table]:
    """The rows of one CSV file (decompressed by its ending), its `id_column` as text, in
    tables of `ROWS_PER_BLOCK` rows; `BatchInputError` naming the file when it is not CSV."""
    table = read_table(filesystem, path, id_column)
    if table.num_rows == 0:
        yield table
        return
    for start in range(0, table.num_rows, ROWS_PER_BLOCK):
        yield table.slice(start, ROWS_PER_BLOCK)


def read_table(filesystem: pafs.FileSystem, path: str, id_column: str) -> pa.Table:
    """One CSV file as one table (see the module's text)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    options = pacsv.ConvertOptions(column_types={id_column: pa.string()})
    try:
        with filesystem.open_input_stream(path, compression="detect") as stream:
            return pacsv.read_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=False),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=options,
            )
    except pa.ArrowInvalid as error:
        reason = " ".join((str(error).strip().splitlines() or [""])[0].split())
        raise BatchInputError(f"CSV file {redact(path)!r}: {reason}", source=path) from None
