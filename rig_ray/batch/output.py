"""The output folder of a batch job: what is already in it, and writing new Parquet parts.

Parts are written whole or not at all (locally: to a hidden temporary name, then renamed), so a
job killed at any moment leaves only complete files, and a rerun knows exactly what is done.
`OutputFolder.merge` rewrites many small parts (a pipeline's stream mode writes one per batch)
as few, under the same rule: a merged part is complete before the parts it replaces go.
"""

from __future__ import annotations

import datetime
import os
import time
import typing as t
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rig_ray.batch.causes import cause_line
from rig_ray.batch.done_ids import Scan
from rig_ray.batch.source import open_filesystem
from rig_ray.errors import BatchInputError

PART_PREFIX = "part-"
_TEMP_PREFIX = ".tmp-"


class OutputFolder:
    """A folder (local or any pyarrow filesystem URI) of Parquet parts, one row per generation."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.filesystem, self.path = open_filesystem(location)
        info = self.filesystem.get_file_info(self.path)
        if info.type == pafs.FileType.File:
            raise BatchInputError(
                f"output {location!r} is a file; give a folder for the Parquet parts",
                source=location,
            )

    def parts(self) -> list[str]:
        """The complete Parquet parts in the folder (`part-*.parquet`), sorted. Other files
        (notes, a Parquet file of another tool) are not the job's: resume, merge and
        `read_output` leave them be."""
        info = self.filesystem.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return []
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.path, recursive=False))
        return sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File
            and i.base_name.startswith(PART_PREFIX)
            and i.base_name.endswith(".parquet")
        )

    def scan(self) -> Scan:
        """What the folder holds: every (id, generation_index) with a row, which of them
        failed, and which have more than one row (a retry that stopped before cleaning up)."""
        return Scan(self._read(part, ["id", "generation_index", "error"]) for part in self.parts())

    def compact(self, scan: Scan | None = None) -> int:
        """Leave one row per (id, generation_index): the first that succeeded, else the
        newest failure. Parts are rewritten whole (or removed when emptied); returns the
        number of rows dropped. `scan` is the folder's, if it was just made."""
        scan = scan or self.scan()
        if not scan.repeated:
            return 0
        parts = self.parts()
        keep: dict[tuple[str, int], tuple[int, int, bool]] = {}  # key -> (part, row, ok)
        for number, part in enumerate(parts):
            table = self._read(part, ["id", "generation_index", "error"])
            ok = pc.is_null(table.column("error")).to_pylist()
            for row, key in enumerate(_keys(table)):
                kept = keep.get(key)
                # the first success stays; until one comes, a newer failure replaces an older
                if key in scan.repeated and (kept is None or not kept[2]):
                    keep[key] = (number, row, ok[row])
        dropped = 0
        for number, part in enumerate(parts):
            table = self._read(part, None)
            mask = [
                key not in scan.repeated or keep[key][:2] == (number, row)
                for row, key in enumerate(_keys(table))
            ]
            if all(mask):
                continue
            dropped += mask.count(False)
            self._rewrite(part, table.filter(pa.array(mask)))
        return dropped

    def merge(
        self, *, rows_per_part: int, before_part: t.Callable[[], None] | None = None
    ) -> Merged:
        """Merge runs of consecutive parts into parts of up to `rows_per_part` rows, in the
        folder's order; parts that hold `rows_per_part` rows or more stay as they are, and a
        run is merged only where that leaves fewer parts. The caller holds the folder's lock;
        `before_part` runs before each merged part is written (it raises to stop).

        Each merged part is written whole under the name of the first part of its run
        (replacing it, so the folder's order holds), and only then are the others deleted: a
        process killed in between leaves their rows twice, and `compact` (on a resume, and
        here before merging) leaves one of each. Returns the parts merged and how many
        they became."""
        runs = self._merge_runs(rows_per_part)
        if not runs:
            return Merged(0, 0)
        self._clear_temporaries()
        scan = self.scan()
        if scan.repeated:  # a merge or a retry that stopped before deleting what it replaced
            self.compact(scan)
            runs = self._merge_runs(rows_per_part)
        for run in runs:
            tables = [self._read(part, None) for part in run]
            table = pa.concat_tables(tables, promote_options="permissive")
            if before_part is not None:
                before_part()
            _write_whole(self.filesystem, table, run[0])
            for part in run[1:]:
                self._delete(part)
        return Merged(sum(len(run) for run in runs), len(runs))

    def _merge_runs(self, rows_per_part: int) -> list[list[str]]:
        """Runs of consecutive parts whose rows add up to `rows_per_part` at most (row counts
        from the parts' footers), two parts or more each."""
        runs: list[list[str]] = []
        total = 0
        for part in self.parts():
            rows = self._rows(part)
            if not runs or total + rows > rows_per_part:
                runs.append([])
                total = 0
            runs[-1].append(part)
            total += rows
        return [run for run in runs if len(run) > 1]

    def _rows(self, part: str) -> int:
        try:
            return int(pq.read_metadata(part, filesystem=self.filesystem).num_rows)
        except (pa.ArrowInvalid, OSError) as error:
            raise BatchInputError(
                f"output part {part!r} cannot be read ({cause_line(error)}); move it away "
                "to resume",
                source=self.location,
            ) from error

    def _delete(self, part: str) -> None:
        self.filesystem.delete_file(part)

    def _read(self, part: str, columns: list[str] | None) -> pa.Table:
        try:
            return pq.read_table(part, columns=columns, filesystem=self.filesystem)
        except (pa.ArrowInvalid, OSError, KeyError) as error:
            raise BatchInputError(
                f"output part {part!r} cannot be read ({cause_line(error)}); move it away "
                "to resume",
                source=self.location,
            ) from error

    def _rewrite(self, part: str, table: pa.Table) -> None:
        if table.num_rows == 0:
            self._delete(part)
        else:
            _write_whole(self.filesystem, table, part)

    def writer(
        self,
        *,
        rows_per_part: int,
        seconds_per_part: float,
        before_part: t.Callable[[], None] | None = None,
    ) -> PartWriter:
        """A writer of new parts; `before_part` runs before each part is written (it raises
        to stop the run: a lock that was lost, a manifest that now differs)."""
        self.filesystem.create_dir(self.path, recursive=True)
        self._clear_temporaries()
        return PartWriter(
            self,
            rows_per_part=rows_per_part,
            seconds_per_part=seconds_per_part,
            before_part=before_part,
        )

    def _clear_temporaries(self) -> None:
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.path, recursive=False))
        for info in infos:
            if info.type == pafs.FileType.File and info.base_name.startswith(_TEMP_PREFIX):
                self.filesystem.delete_file(info.path)


class Merged(t.NamedTuple):
    """What `OutputFolder.merge` did: `parts` merged into `into` parts."""

    parts: int
    into: int


class PartWriter:
    """Buffers output tables and writes them out as Parquet parts.

    A part is written once `rows_per_part` rows are buffered, or once the oldest buffered row
    has waited `seconds_per_part`, so a killed job loses at most that much work.
    """

    def __init__(
        self,
        folder: OutputFolder,
        *,
        rows_per_part: int,
        seconds_per_part: float,
        before_part: t.Callable[[], None] | None = None,
    ):
        self._folder = folder
        self._before_part = before_part
        self._rows_per_part = rows_per_part
        self._seconds_per_part = seconds_per_part
        started = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%f")
        self._run = f"{started}-{uuid.uuid4().hex[:8]}"
        self._buffer: list[pa.Table] = []
        self._buffered_rows = 0
        self._oldest: float | None = None
        self.written: list[str] = []

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._oldest is None:
            self._oldest = time.monotonic()
        self._buffer.append(table)
        self._buffered_rows += table.num_rows
        if self._buffered_rows >= self._rows_per_part or self.overdue():
            self.flush()

    def overdue(self) -> bool:
        return self._oldest is not None and (
            time.monotonic() - self._oldest >= self._seconds_per_part
        )

    def flush(self) -> None:
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer, promote_options="permissive")
        name = f"{PART_PREFIX}{self._run}-{len(self.written):06d}.parquet"  # sorts by run start
        final = f"{self._folder.path}/{name}"
        filesystem = self._folder.filesystem
        if self._before_part is not None:
            self._before_part()
        _write_whole(filesystem, table, final)
        self.written.append(final)
        self._buffer, self._buffered_rows, self._oldest = [], 0, None


def _keys(table: pa.Table) -> t.Iterator[tuple[str, int]]:
    return zip(
        table.column("id").to_pylist(), table.column("generation_index").to_pylist(), strict=True
    )


OBJECT_STORES = frozenset({"s3", "gcs", "abfs"})
"""Filesystems whose uploads become visible only once complete: written to the final name."""


def _write_whole(filesystem: pafs.FileSystem, table: pa.Table, final: str) -> None:
    """Write a Parquet file whole or not at all: to a new hidden temporary name (created
    without following links, synced to disk), then renamed over `final`. Object stores make
    an upload visible only once it is complete, so there it goes to `final` at once."""
    if filesystem.type_name in OBJECT_STORES:
        pq.write_table(table, final, filesystem=filesystem)
        return
    folder, name = final.rsplit("/", 1)
    temporary = f"{folder}/{_TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}"
    if isinstance(filesystem, pafs.LocalFileSystem):
        with create_new(temporary) as out:
            pq.write_table(table, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, final)
        sync_folder(folder)
    else:  # HDFS and the like: a rename there is atomic too
        with filesystem.open_output_stream(temporary) as stream:
            pq.write_table(table, stream)
        filesystem.move(temporary, final)


def create_new(path: str) -> t.BinaryIO:
    """A new local file opened for writing: never an existing file, never through a link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    return os.fdopen(os.open(path, flags, 0o644), "wb")


def sync_folder(folder: str) -> None:
    """Make a rename in a local folder durable (where the OS allows syncing a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_output(location: str, columns: t.Sequence[str] | None = None) -> pa.Table:
    """Every part of a batch job's output folder as one table."""
    folder = OutputFolder(location)
    tables = [
        pq.read_table(part, columns=columns, filesystem=folder.filesystem)
        for part in folder.parts()
    ]
    if not tables:
        raise BatchInputError(f"no output parts in {location!r}", source=location)
    return pa.concat_tables(tables, promote_options="permissive")
