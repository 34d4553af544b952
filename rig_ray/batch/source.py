"""Reading a batch job's prompts: JSONL, Parquet or CSV from a path, folder, glob or URI."""

from __future__ import annotations

import fnmatch
import logging
import re
import typing as t

from rig_ray.batch.csv_input import csv_columns, read_csv
from rig_ray.batch.data_tasks import from_blocks, put_block, remote_args
from rig_ray.batch.json_input import first_keys, read_json
from rig_ray.batch.json_values import ROWS_PER_BLOCK
from rig_ray.batch.manifest import MANIFEST_NAME
from rig_ray.errors import BatchInputError
from rig_ray.redaction import redact

if t.TYPE_CHECKING:
    import pyarrow.fs as pafs
    import ray.data

logger = logging.getLogger(__name__)

FORMATS: dict[str, str] = {
    ".jsonl": "json",
    ".json": "json",
    ".ndjson": "json",
    ".jsonl.gz": "json",
    ".json.gz": "json",
    ".ndjson.gz": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".tsv": "csv",
    ".tsv.gz": "csv",
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
        files = [  # a glob is read as it matches, output folders' parts too
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
            infos = _listing(filesystem, path, source)
            files = [
                f.path
                for f in _not_outputs(infos, path)
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
    inferred (a CSV file's over all its rows, see `rig_ray.batch.csv_input`). The read
    tasks ask `data_cpus` each (see `rig_ray.batch.data_tasks`); with under one, Parquet
    files are read by this process instead (Ray Data's Parquet reader samples the files in
    tasks of one CPU, whatever the read asks).
    """
    import ray.data

    filesystem, files = input_files(source)
    kind = format_of(files[0])
    args = remote_args(data_cpus)
    if kind == "parquet" and data_cpus is not None and data_cpus < 1:
        return _parquet_here(filesystem, files)
    if kind == "parquet":
        return ray.data.read_parquet(files, filesystem=filesystem, **args)
    if kind == "csv":  # each file whole, its types inferred over all its rows
        return read_csv(filesystem, files, id_column, args)
    # Lines are parsed here (not by pyarrow, which reads every number as a number) so that
    # the id keeps the text it was written as. A file holding one JSON array works too.
    return read_json(filesystem, files, id_column, args)


def input_columns(
    dataset: ray.data.Dataset,
    source: str,
    *,
    id_column: str = "id",
    wanted: t.Collection[str] = (),
) -> tuple[str, ...]:
    """The columns of the first rows of `source`, which `read_prompts` read as `dataset`:
    the schema Ray already knows (Parquet, mostly), else the footer of the first Parquet file
    (one without row groups), the header of the first CSV file or the keys of the first JSON
    rows, read by this process (the first file that has any). Columns of `wanted` that those
    lack are looked for in every file's first columns too, and added where found: a folder
    whose later files have a column the first lacks (parts written as a schema grew). Where
    they are still missing and a JSON file has rows past those read, they are added as well,
    unconfirmed: a key may first appear further down. The job's first pass, which reads
    every row, then holds them to its schema (`rig_ray.batch.run`).

    No Ray task runs: `Dataset.columns()` would run the read until its first block, then
    force-kill the read tasks still running, and a killed task whose reply lands at that
    moment can fail a check in Ray's driver (2.60) that ends the process
    (`Tried to complete task that was not pending`).
    """
    each = _columns_of_each_file(source, id_column)  # files listed when first asked
    known = dataset.schema(fetch_if_missing=False)
    partial = False  # a file read here has rows past those whose keys were read
    if known is not None:
        names = _named_once(tuple(known.names), source)
    else:
        names = ()
        for names, whole in each:
            partial = partial or not whole
            if names:
                break
    missing = [name for name in wanted if name not in names]
    for found, whole in each:  # the files after those read (all, where Ray knew the schema)
        if not missing:
            break
        partial = partial or not whole
        names += tuple(name for name in missing if name in found)
        missing = [name for name in missing if name not in found]
    if not (partial and missing):
        return names
    logger.warning(
        "rig-ray: %s is a key of none of the first %s rows of each JSON file; every row is "
        "read for %s before any model loads",
        " or ".join(repr(name) for name in missing),
        f"{ROWS_PER_BLOCK:,}",
        "it" if len(missing) == 1 else "them",
    )
    return names + tuple(missing)


def _columns_of_each_file(source: str, id_column: str) -> t.Iterator[tuple[tuple[str, ...], bool]]:
    """Each input file's columns, in order, and whether they are all it has: a Parquet
    file's footer, a CSV file's header, the keys of a JSON file's first rows (`first_keys`:
    all only where the file has no more)."""
    import pyarrow.parquet as pq

    filesystem, files = input_files(source)
    for path in files:
        kind = format_of(path)
        if kind == "parquet":  # Ray read it in its tasks (not here): its footer says
            with filesystem.open_input_file(path) as handle:
                names, whole = tuple(pq.read_schema(handle).names), True
        elif kind == "csv":
            names, whole = tuple(csv_columns(filesystem, path)), True
        else:
            names, whole = first_keys(filesystem, path, id_column)
        yield _named_once(names, redact(path)), whole


def _named_once(names: tuple[str, ...], where: str) -> tuple[str, ...]:
    """`names`, when no column has the name of another (a CSV header can repeat one, and a
    template could not tell which it means); else `BatchInputError` naming it."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise BatchInputError(
                f"{names.count(name)} columns are named {name!r}; give each a name of its own",
                source=where,
                column=name,
            )
        seen.add(name)
    return names


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


def _listing(filesystem: pafs.FileSystem, folder: str, source: str) -> list[pafs.FileInfo]:
    import pyarrow.fs as pafs

    try:
        infos = filesystem.get_file_info(pafs.FileSelector(folder, recursive=True))
    except (FileNotFoundError, OSError) as error:
        raise BatchInputError(f"cannot list {source!r}: {error}", source=source) from error
    return [info for info in infos if info.type == pafs.FileType.File]


def _not_outputs(infos: list[pafs.FileInfo], base: str) -> list[pafs.FileInfo]:
    """`infos` less the files of the batch jobs' output folders below `base` (a folder with
    a manifest): an output folder put inside its own input folder (`rig-ray batch data/
    data/out`) is not read as input by the next run. (A glob that names such parts, as in
    `runs/*/part-*.parquet`, reads them.)"""
    outputs = tuple(
        info.path[: -len(MANIFEST_NAME)]
        for info in infos
        if info.base_name == MANIFEST_NAME
        and info.path.rstrip("/") != f"{base.rstrip('/')}/{MANIFEST_NAME}"
    )
    return [info for info in infos if not info.path.startswith(outputs)] if outputs else infos


def _hidden(path: str, base: str) -> bool:
    """Whether a file or any folder on its way from `base` is hidden (`.x`) or a by-product
    of other tools (`_x`, like Spark's `_temporary` and `_SUCCESS`)."""
    inside = path[len(base) :].strip("/") if path.startswith(base) else path
    return any(part.startswith((".", "_")) for part in inside.split("/"))
