"""A later stage's input, made from the stage before's Parquet parts one part at a time.

`<output>/_inputs/<stage>/` holds one Parquet file per part of the stage before, named after
the part (and its size and time, so a part rewritten by a retry's clean-up is made again);
the files made by one update sit in a numbered subfolder of their own (`000001/`, ...), so
that a stream-mode round can read the new rows only.
Making the input again reads only the parts that are new since the last time, one at a time,
and removes the files of parts that are gone (and subfolders left empty): memory holds one
part (and, for the rule below, the keys of the stage before, as `batch.run`'s resume does),
never the whole stage. A stage before whose small parts were merged (stream mode, at the end
of a run) has new parts under the names of the first of each run: their rows, with the same
ids, are made again from them, and the files of the small parts go.

Where the stage before holds two rows for one (id, generation_index) (a `retry_failed` run
stopped before its clean-up), the one its clean-up will keep is used: the first that
succeeded, else the newest failure.
"""

from __future__ import annotations

import hashlib
import typing as t

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rig_ray.batch.output import OutputFolder, _write_whole
from rig_ray.batch.schema import OUTPUT_COLUMNS, passthrough_names

if t.TYPE_CHECKING:
    from rig_ray.batch.pipeline_data import StageInput

PARENT_COLUMN = "parent_id"

Key = tuple[str, int]


class Derivation(t.NamedTuple):
    """How rows of the stage before become rows of this one."""

    previous: str
    """The stage before's name (the prefix of its columns)."""
    previous_read: StageInput
    """What the stage before read."""
    earlier: tuple[str, ...]
    """The stages before the stage before."""
    keep_errors: bool


def own_columns(names: t.Sequence[str], read: StageInput) -> list[str]:
    """A stage's own columns in its output: generation and parsed ones, not written-through."""
    carried = set(passthrough_names(read.columns, read.id_column).values())
    return [name for name in names if name not in carried]


class InputUpdate(t.NamedTuple):
    """A stage's input after an update: its columns, its rows, and the subfolder holding
    only the files this update made (None: nothing new)."""

    columns: list[str]
    rows: int
    fresh: str | None


def update_input(
    folder: OutputFolder, target: str, filesystem: pafs.FileSystem, how: Derivation
) -> InputUpdate | None:
    """Bring the input folder `target` (a path in `filesystem`) up to date with the parts of
    `folder`; None when `folder` has no part yet. New files go into a new numbered subfolder
    of `target`, so a round can read just them."""
    parts = folder.parts()
    if not parts:
        return None
    dropped = _dropped_rows(folder, parts)
    infos = {info.path: info for info in filesystem.get_file_info(parts)}
    wanted = {_input_name(part, infos[part], dropped.get(part)): part for part in parts}
    filesystem.create_dir(target, recursive=True)
    existing = _files(filesystem, target)
    gone = set(existing) - set(wanted)
    for name in gone:  # its part is gone, was rewritten, or was merged into another
        filesystem.delete_file(existing.pop(name))
    fresh = _next_subfolder(filesystem, target) if set(wanted) - set(existing) else None
    if gone:  # once the new one is numbered, so that it comes after them
        _remove_empty_subfolders(filesystem, target)
    for name, part in sorted(wanted.items()):
        if name not in existing:
            table = pq.read_table(part, filesystem=folder.filesystem)
            if part in dropped:
                keep = pc.invert(pa.array(_mask(table.num_rows, dropped[part])))
                table = table.filter(keep)
            filesystem.create_dir(f"{target}/{fresh}", recursive=True)
            path = f"{target}/{fresh}/{name}"
            _write_whole(filesystem, derive_table(table, how), path)
            existing[name] = path
    columns, rows = input_summary(filesystem, [existing[name] for name in sorted(wanted)])
    return InputUpdate(columns, rows, fresh)


def input_columns(folder: OutputFolder, how: Derivation) -> list[str] | None:
    """The columns `update_input` would give the input made from `folder`'s parts, read from
    their footers and writing nothing; None when `folder` has no part yet."""
    parts = folder.parts()
    if not parts:
        return None
    columns: dict[str, None] = {}
    for part in parts:
        schema = pq.read_schema(part, filesystem=folder.filesystem)
        columns.update(dict.fromkeys(derive_table(schema.empty_table(), how).column_names))
    return list(columns)


def input_summary(filesystem: pafs.FileSystem, files: t.Sequence[str]) -> tuple[list[str], int]:
    """The columns (in first-seen order) and the row count of an input's files, from their
    footers."""
    columns: dict[str, None] = {}
    rows = 0
    for path in files:
        metadata = pq.read_metadata(path, filesystem=filesystem)
        rows += metadata.num_rows
        columns.update(dict.fromkeys(metadata.schema.to_arrow_schema().names))
    return list(columns), rows


def derive_table(table: pa.Table, how: Derivation) -> pa.Table:
    """The rows of the next stage from a table of the stage before's output."""
    read = how.previous_read
    own = own_columns(table.column_names, read)
    carried = passthrough_names(read.columns, read.id_column)
    first = not how.earlier  # the stage before is the first: it read the pipeline's input
    if not how.keep_errors:
        table = table.filter(pc.is_null(table.column("error")))
    ids = pc.binary_join_element_wise(
        table.column("id"), pc.cast(table.column("generation_index"), pa.string()), "/"
    )
    columns: dict[str, pa.ChunkedArray | pa.Array] = {"id": ids, PARENT_COLUMN: table.column("id")}
    for name in _context_names(read, first, how.earlier):  # input's, earlier stages'
        columns[name] = table.column(name if first else carried[name])
    columns.setdefault("text", table.column("text"))
    for name in own:
        if name not in OUTPUT_COLUMNS:
            columns.setdefault(name, table.column(name))  # the stage before's parsed columns
    for name in own:
        columns[f"{how.previous}_{name}"] = table.column(name)
    return pa.table(columns)


def _context_names(previous_read: StageInput, first: bool, earlier: t.Sequence[str]) -> list[str]:
    """The columns of the previous stage's input that travel on: for the first stage, the
    pipeline input's (as written through); after it, the input's and the prefixed ones (not
    the unprefixed copies of the stage before it, which are under its prefix too)."""
    if first:
        return list(passthrough_names(previous_read.columns, previous_read.id_column).values())
    present = set(previous_read.columns)
    return [
        name
        for name in previous_read.columns
        if name not in {"id", PARENT_COLUMN, "text"}
        and not any(f"{stage}_{name}" in present for stage in earlier)
    ]


def _dropped_rows(folder: OutputFolder, parts: list[str]) -> dict[str, list[int]]:
    """Part -> the rows to leave out: those of a repeated key that its clean-up drops."""
    scan = folder.scan()
    if not scan.repeated:
        return {}
    keep: dict[Key, tuple[str, int, bool]] = {}  # key -> (part, row, ok)
    rows: dict[str, list[tuple[int, Key]]] = {}
    for part in parts:
        table = pq.read_table(
            part, columns=["id", "generation_index", "error"], filesystem=folder.filesystem
        )
        ok = pc.is_null(table.column("error")).to_pylist()
        keys = zip(
            table.column("id").to_pylist(),
            table.column("generation_index").to_pylist(),
            strict=True,
        )
        for row, key in enumerate(keys):
            if key not in scan.repeated:
                continue
            rows.setdefault(part, []).append((row, key))
            kept = keep.get(key)
            if kept is None or not kept[2]:  # the first success stays, else the newest failure
                keep[key] = (part, row, ok[row])
    return {
        part: dropped
        for part, found in rows.items()
        if (dropped := [row for row, key in found if keep[key][:2] != (part, row)])
    }


def _input_name(part: str, info: pafs.FileInfo, dropped: list[int] | None) -> str:
    """The input file made from `part`: its name, size and time, and the rows left out."""
    stem = part.rsplit("/", 1)[-1].removesuffix(".parquet")
    mtime = info.mtime_ns if info.mtime_ns is not None else 0
    mark = f"{stem}-{info.size}-{mtime}"
    if dropped:
        mark += "-" + hashlib.sha256(repr(dropped).encode()).hexdigest()[:12]
    return f"{mark}.parquet"


def _mask(count: int, rows: list[int]) -> list[bool]:
    marked = [False] * count
    for row in rows:
        marked[row] = True
    return marked


def _files(filesystem: pafs.FileSystem, folder: str) -> dict[str, str]:
    """Name -> path of every input file under `folder` (in any subfolder)."""
    infos = filesystem.get_file_info(pafs.FileSelector(folder, recursive=True))
    return {
        info.base_name: info.path
        for info in infos
        if info.type == pafs.FileType.File
        and info.base_name.endswith(".parquet")
        and not info.base_name.startswith((".", "_"))
    }


def _remove_empty_subfolders(filesystem: pafs.FileSystem, folder: str) -> None:
    """Remove the numbered subfolders of `folder` whose files are all gone."""
    infos = filesystem.get_file_info(pafs.FileSelector(folder, recursive=True))
    full = {info.path.rsplit("/", 1)[0] for info in infos if info.type == pafs.FileType.File}
    for info in infos:
        numbered = info.type == pafs.FileType.Directory and info.base_name.isdigit()
        if numbered and info.path not in full:
            filesystem.delete_dir(info.path)


def _next_subfolder(filesystem: pafs.FileSystem, folder: str) -> str:
    """The name of a new numbered subfolder of `folder`, after every one there."""
    infos = filesystem.get_file_info(pafs.FileSelector(folder, recursive=False))
    numbers = [
        int(info.base_name)
        for info in infos
        if info.type == pafs.FileType.Directory and info.base_name.isdigit()
    ]
    return f"{max(numbers, default=0) + 1:06d}"
