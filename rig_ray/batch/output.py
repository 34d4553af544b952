"""The output folder of a batch job: what is already in it, and writing new Parquet parts.

Parts are written whole or not at all (locally: to a hidden temporary name, then renamed), so a
job killed at any moment leaves only complete files, and a rerun knows exactly what is done.
"""

from __future__ import annotations

import time
import typing as t
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rig_ray.batch.plan import done_key
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
        """The complete Parquet parts in the folder, sorted."""
        info = self.filesystem.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return []
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.path, recursive=False))
        return sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File
            and i.base_name.endswith(".parquet")
            and not i.base_name.startswith((".", "_"))
        )

    def done_keys(self) -> frozenset[str]:
        """A key (`done_key`) for every (id, generation_index) the folder already holds."""
        keys: set[str] = set()
        for part in self.parts():
            try:
                table = pq.read_table(
                    part, columns=["id", "generation_index"], filesystem=self.filesystem
                )
            except (pa.ArrowInvalid, OSError, KeyError) as error:
                raise BatchInputError(
                    f"output part {part!r} cannot be read ({error}); move it away to resume",
                    source=self.location,
                ) from error
            for row_id, index in zip(
                table.column("id").to_pylist(),
                table.column("generation_index").to_pylist(),
                strict=True,
            ):
                keys.add(done_key(row_id, index))
        return frozenset(keys)

    def writer(self, *, rows_per_part: int, seconds_per_part: float) -> PartWriter:
        self.filesystem.create_dir(self.path, recursive=True)
        self._clear_temporaries()
        return PartWriter(self, rows_per_part=rows_per_part, seconds_per_part=seconds_per_part)

    def _clear_temporaries(self) -> None:
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.path, recursive=False))
        for info in infos:
            if info.type == pafs.FileType.File and info.base_name.startswith(_TEMP_PREFIX):
                self.filesystem.delete_file(info.path)


class PartWriter:
    """Buffers output tables and writes them out as Parquet parts.

    A part is written once `rows_per_part` rows are buffered, or once the oldest buffered row
    has waited `seconds_per_part`, so a killed job loses at most that much work.
    """

    def __init__(self, folder: OutputFolder, *, rows_per_part: int, seconds_per_part: float):
        self._folder = folder
        self._rows_per_part = rows_per_part
        self._seconds_per_part = seconds_per_part
        self._run = uuid.uuid4().hex[:12]
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
        name = f"{PART_PREFIX}{self._run}-{len(self.written):06d}.parquet"
        final = f"{self._folder.path}/{name}"
        filesystem = self._folder.filesystem
        if isinstance(filesystem, pafs.LocalFileSystem):
            temporary = f"{self._folder.path}/{_TEMP_PREFIX}{name}"
            pq.write_table(table, temporary, filesystem=filesystem)
            filesystem.move(temporary, final)
        else:  # object stores make an upload visible only once it is complete
            pq.write_table(table, final, filesystem=filesystem)
        self.written.append(final)
        self._buffer, self._buffered_rows, self._oldest = [], 0, None


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
