"""JSON Lines input: rows with the id kept as written, read in byte ranges by parallel tasks.

A JSON Lines file larger than `RANGE_BYTES` is read by several tasks, each taking the lines
that start in its byte range, so no task holds more than a range's rows and a large file is
parsed on as many CPUs as the cluster gives. A line belongs to the range its first byte is
in. Compressed files and files holding one JSON array are read whole, by one task, which
hands their rows over as it reads them once they are too many to hold (see `read_part`).

Errors name the line (or the JSON row) in the whole file. A task that is not the file's
first counts the lines before its range only when it has an error to name.
"""

from __future__ import annotations

import functools
import io
import itertools
import re
import typing as t

from rig_ray.batch.data_tasks import FileRead, read_files
from rig_ray.batch.json_values import (
    ROWS_PER_BLOCK,
    as_row,
    as_tables,
    decoded,
    json_decoder,
    json_lines,
    utf8_text,
)
from rig_ray.errors import BatchInputError

if t.TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs
    import ray.data

    from rig_ray.batch.widen import OneSchema

RANGE_BYTES = 32 << 20
"""The bytes of a file each read task takes (files this size or smaller: one task)."""
HOLD_BYTES = 2 * RANGE_BYTES
"""The Arrow bytes of a file read whole that its task holds to give them one schema; a file
whose tables outgrow it is read twice (see `read_part`)."""
_CHUNK = 1 << 20
_BOM = b"\xef\xbb\xbf"
_LEADING_SPACE = re.compile(rb"[ \t\r\n]*")


class Part(t.NamedTuple):
    """The bytes [start, end) of a file that one task reads; `end` None: the whole file."""

    path: str
    start: int
    end: int | None
    size: int | None
    """The bytes the part holds (None: not known)."""


def json_parts(
    filesystem: pafs.FileSystem, files: list[str], size: int | None = None
) -> list[Part]:
    """The parts of `files` for read tasks, in input order: byte ranges of `size` (default
    `RANGE_BYTES`) of each large plain JSON Lines file, and each other file whole."""
    size = size or RANGE_BYTES
    parts: list[Part] = []
    for info in filesystem.get_file_info(files):
        whole = info.size is None or info.size <= size or _read_whole(filesystem, info.path)
        if whole:
            parts.append(Part(info.path, 0, None, info.size))
            continue
        for at in range(0, info.size, size):
            end = min(at + size, info.size)
            parts.append(Part(info.path, at, end, end - at))
    return parts


def _read_whole(filesystem: pafs.FileSystem, path: str) -> bool:
    """Whether a file is read by one task: compressed, or one JSON array (or no telling)."""
    if path.lower().endswith(".gz"):
        return True
    with filesystem.open_input_file(path) as handle:
        head = handle.read(64 << 10)
    _, at = _opening(head)
    return head[at : at + 1] in (b"[", b"")


def _opening(head: bytes) -> tuple[int, int]:
    """Where the text of a file that begins with `head` starts (past a byte order mark),
    and where its first byte that is not white space is (`len(head)` when none is)."""
    start = len(_BOM) if head.startswith(_BOM) else 0
    spaces = _LEADING_SPACE.match(head, start)
    return start, spaces.end() if spaces is not None else start


def read_json(
    filesystem: pafs.FileSystem, files: list[str], id_column: str, args: dict[str, t.Any]
) -> ray.data.Dataset:
    """A lazy dataset of the rows of the JSON `files`, a read task per part (`json_parts`);
    `args`: the tasks' remote args."""
    reads = [
        FileRead(functools.partial(read_part, filesystem, part, id_column), part.path, part.size)
        for part in json_parts(filesystem, files)
    ]
    return read_files("ReadJSONLines", reads, args)


def read_part(filesystem: pafs.FileSystem, part: Part, id_column: str) -> t.Iterator[pa.Table]:
    """The rows of one part as tables of one schema (every row's keys, each column widened
    to hold every row's value), made `ROWS_PER_BLOCK` rows at a time.

    A byte range's tables are held until its end, then handed over. So are a whole file's
    while they fit in `HOLD_BYTES`; past that, they are let go as they are made and the
    file is read (and decompressed) a second time, its tables handed over as they come in
    the schema the first reading found."""
    if part.end is None:
        yield from _whole_file(filesystem, part.path, id_column)
        return
    from rig_ray.batch.widen import OneSchema

    with filesystem.open_input_file(part.path) as handle:
        first = _first_line(handle, part.start)
        if first is None or first >= part.end:
            return  # no line starts in this range
        before = _CountedBefore(filesystem, part.path, first)

        def rows_before() -> int:
            return before()[1]

        rows = json_lines(_file_lines(handle, first, part.end), id_column, before)
        schema = OneSchema()
        held = list(_joined(as_tables(rows, rows_before), schema, rows_before))
    yield from map(schema.conform, held)


def _whole_file(filesystem: pafs.FileSystem, path: str, id_column: str) -> t.Iterator[pa.Table]:
    """`read_part` of a file read whole, decompressed as it is read."""
    from rig_ray.batch.widen import OneSchema

    def tables() -> t.Iterator[pa.Table]:
        with filesystem.open_input_stream(path, compression="detect") as stream:
            yield from as_tables(_file_rows(stream.read, id_column), lambda: 0)

    schema = OneSchema()
    held: list[pa.Table] | None = []
    size = 0
    for table in _joined(tables(), schema, lambda: 0):
        if held is not None:
            held.append(table)
            size += table.nbytes
            if size > HOLD_BYTES:
                held = None  # let go: the file is read again below
    yield from map(schema.conform, tables() if held is None else held)


def _joined(
    tables: t.Iterable[pa.Table], schema: OneSchema, before: t.Callable[[], int]
) -> t.Iterator[pa.Table]:
    """`tables`, each joined into `schema` as it passes; `before()` gives the JSON rows of
    the file before them, for an error's row number."""
    rows = 0
    for table in tables:
        schema.add(table.schema, functools.partial(_json_row, before, rows))
        rows += table.num_rows
        yield table


def _json_row(before: t.Callable[[], int], rows: int) -> str:
    return f"JSON row {before() + rows + 1}"


def first_keys(
    filesystem: pafs.FileSystem, path: str, id_column: str
) -> tuple[tuple[str, ...], bool]:
    """The keys of a JSON file's first rows (its first `ROWS_PER_BLOCK`, in the order they
    first appear), read by this process, and whether those rows were all the file has; ()
    for a file of no rows or only `{}` ones."""
    with filesystem.open_input_stream(path, compression="detect") as stream:
        keys: dict[str, None] = {}
        rows = _file_rows(stream.read, id_column)
        for row in itertools.islice(rows, ROWS_PER_BLOCK):
            keys.update(dict.fromkeys(row))
        try:
            whole = next(rows, None) is None
        except BatchInputError:  # a bad row past them: the job's read tasks name it
            whole = False
    return tuple(keys), whole


class _CountedBefore:
    """The lines and rows of a file before the offset `first`, counted once, when asked."""

    def __init__(self, filesystem: pafs.FileSystem, path: str, first: int) -> None:
        self._filesystem, self._path, self._first = filesystem, path, first
        self._counted: tuple[int, int] | None = None

    def __call__(self) -> tuple[int, int]:
        if self._counted is None:
            lines = rows = 0
            with self._filesystem.open_input_file(self._path) as handle:
                for line in _file_lines(handle, 0, self._first):
                    lines += 1
                    rows += bool(line.decode("utf-8", "replace").strip())
            self._counted = (lines, rows)
        return self._counted


def _first_line(handle: t.Any, start: int) -> int | None:
    """Where the first line that starts at or after `start` starts; None when none does."""
    if start == 0:
        return 0
    handle.seek(start - 1)
    at = start - 1
    while chunk := handle.read(_CHUNK):
        newline = chunk.find(b"\n")
        if newline >= 0:
            return at + newline + 1
        at += len(chunk)
    return None


def _file_lines(handle: t.Any, first: int, end: int | None) -> t.Iterator[bytes]:
    """The lines of a file that start at offset `first` (a line's start) or later and
    before `end`; the file's first line without a byte order mark."""
    handle.seek(first)
    lines = _lines(handle.read, first, end)
    if first == 0:
        for line in lines:
            yield line[len(_BOM) :] if line.startswith(_BOM) else line
            break
    yield from lines


def _lines(read: t.Callable[[int], bytes], at: int, end: int | None) -> t.Iterator[bytes]:
    """Every line (without its `\\n`) that starts at offset `at` or later and before `end`
    (None: the end of the file), read `_CHUNK` bytes at a time from `at`."""
    buffer = bytearray()
    while True:
        chunk = read(_CHUNK)
        buffer += chunk
        cut = 0
        while (newline := buffer.find(b"\n", cut)) >= 0:
            if end is not None and at >= end:
                return
            yield bytes(buffer[cut:newline])
            at += newline + 1 - cut
            cut = newline + 1
        del buffer[:cut]
        if not chunk:
            if buffer and (end is None or at < end):
                yield bytes(buffer)
            return


def json_rows(data: bytes, id_column: str) -> list[dict[str, t.Any]]:
    """The objects of a JSON Lines file (or of one JSON array), with `id_column` as text."""
    return list(iter_json_rows(data, id_column))


def iter_json_rows(data: bytes, id_column: str) -> t.Iterator[dict[str, t.Any]]:
    """`json_rows`, one row at a time: a JSON Lines file is read line by line, so only the
    row being made is held as Python objects (a JSON array is read whole)."""
    return _file_rows(io.BytesIO(data).read, id_column)


def _file_rows(read: t.Callable[[int], bytes], id_column: str) -> t.Iterator[dict[str, t.Any]]:
    """The rows of a whole file that `read` gives a chunk at a time: line by line, or, where
    the file holds one JSON array, the array read whole."""
    head = b""
    while True:  # up to the first byte that is not a byte order mark or white space
        chunk = read(_CHUNK)
        head += chunk
        start, at = _opening(head)
        if not chunk or (len(head) > at and len(head) >= len(_BOM)):
            break
    if head[at : at + 1] == b"[":
        data = head + b"".join(iter(lambda: read(_CHUNK), b""))
        text = utf8_text(data[start:], 1)
        values = decoded(json_decoder(), text, "the JSON array")
        for number, value in enumerate(values):  # text opening with "[" is an array
            yield as_row(value, number, id_column)
        return
    rest = _chained(head[start:], read)
    yield from json_lines(_lines(rest, 0, None), id_column, lambda: (0, 0))


def _chained(head: bytes, read: t.Callable[[int], bytes]) -> t.Callable[[int], bytes]:
    """A `read` that gives `head` first, then what `read` gives."""
    pending = [head] if head else []

    def chained(size: int) -> bytes:
        return pending.pop() if pending else read(size)

    return chained
