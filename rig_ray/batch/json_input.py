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
import json
import re
import typing as t

from rig_ray.batch.data_tasks import FileRead, read_files
from rig_ray.errors import BatchInputError

if t.TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs
    import ray.data

    from rig_ray.batch.widen import OneSchema

ROWS_PER_BLOCK = 10_000
"""JSON rows turned into Arrow at a time: only that many are ever held as Python objects."""
RANGE_BYTES = 32 << 20
"""The bytes of a file each read task takes (files this size or smaller: one task)."""
HOLD_BYTES = 2 * RANGE_BYTES
"""The Arrow bytes of a file read whole that its task holds to give them one schema; a file
whose tables outgrow it is read twice (see `read_part`)."""
_CHUNK = 1 << 20
_BOM = b"\xef\xbb\xbf"
_LEADING_SPACE = re.compile(rb"[ \t\r\n]*")

Before = t.Callable[[], tuple[int, int]]
"""The lines and the JSON rows of the file before a range, counted when an error asks."""


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
        held = list(_joined(_tables(rows, rows_before), schema, rows_before))
    yield from map(schema.conform, held)


def _whole_file(filesystem: pafs.FileSystem, path: str, id_column: str) -> t.Iterator[pa.Table]:
    """`read_part` of a file read whole, decompressed as it is read."""
    from rig_ray.batch.widen import OneSchema

    def tables() -> t.Iterator[pa.Table]:
        with filesystem.open_input_stream(path, compression="detect") as stream:
            yield from _tables(_file_rows(stream.read, id_column), lambda: 0)

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


def first_keys(filesystem: pafs.FileSystem, path: str, id_column: str) -> tuple[str, ...]:
    """The keys of a JSON file's first rows (its first `ROWS_PER_BLOCK`, in the order they
    first appear), read by this process; () for a file of no rows or only `{}` ones."""
    with filesystem.open_input_stream(path, compression="detect") as stream:
        keys: dict[str, None] = {}
        for row in itertools.islice(_file_rows(stream.read, id_column), ROWS_PER_BLOCK):
            keys.update(dict.fromkeys(row))
    return tuple(keys)


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


class _Number(str):
    """A JSON number as written; turned into an int or float everywhere but in the id."""


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
        text = _utf8(data[start:], 1)
        values = _decoded(_decoder(), text, "the JSON array")
        for number, value in enumerate(values):  # text opening with "[" is an array
            yield _row(value, number, id_column)
        return
    rest = _chained(head[start:], read)
    yield from json_lines(_lines(rest, 0, None), id_column, lambda: (0, 0))


def _chained(head: bytes, read: t.Callable[[int], bytes]) -> t.Callable[[int], bytes]:
    """A `read` that gives `head` first, then what `read` gives."""
    pending = [head] if head else []

    def chained(size: int) -> bytes:
        return pending.pop() if pending else read(size)

    return chained


def json_lines(
    lines: t.Iterable[bytes], id_column: str, before: Before
) -> t.Iterator[dict[str, t.Any]]:
    """The rows of JSON `lines` (blank ones skipped); errors name the line or row in the
    whole file, `before` giving the lines and rows that come before these."""
    decoder = _decoder()
    row = 0
    for number, line in enumerate(lines, start=1):
        text = _utf8(line, number, before)
        if not text.strip():
            continue
        value = _decoded(decoder, text, functools.partial(_line, before, number))
        yield _row(value, row, id_column, before)
        row += 1


def _line(before: Before, number: int) -> str:
    return f"line {before()[0] + number}"


def _decoder() -> json.JSONDecoder:
    return json.JSONDecoder(parse_int=_Number, parse_float=_Number)


def _decoded(decoder: json.JSONDecoder, text: str, where: str | t.Callable[[], str]) -> t.Any:
    """`text` decoded, or a `BatchInputError` that names `where` it is."""
    try:
        return decoder.decode(text)
    except RecursionError:
        raise BatchInputError(f"{_said(where)} is nested too deeply to read") from None
    except ValueError as error:
        raise BatchInputError(f"{_said(where)} is not JSON ({error})") from None


def _said(where: str | t.Callable[[], str]) -> str:
    return where if isinstance(where, str) else where()


def _utf8(data: bytes, line: int, before: Before | None = None) -> str:
    """`data`, the text of a file from `line` on, decoded; a `BatchInputError` naming the
    line where it is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        earlier = before()[0] if before is not None else 0
        at = earlier + line + data[: error.start].count(b"\n")
        raise BatchInputError(f"line {at} is not UTF-8 text ({error.reason})") from None


def _row(
    value: t.Any, number: int, id_column: str, before: Before | None = None
) -> dict[str, t.Any]:
    """A decoded JSON value as the row it must be (the `number`th, from 0), its numbers
    turned into ints and floats but the id, which keeps the text it was written as."""
    if not isinstance(value, dict):
        earlier = before()[1] if before is not None else 0
        raise BatchInputError(
            f"JSON row {earlier + number + 1} is a {type(value).__name__}, not an object"
        )
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


def _tables(
    rows: t.Iterable[dict[str, t.Any]], before: t.Callable[[], int]
) -> t.Iterator[pa.Table]:
    """`rows` as tables of `ROWS_PER_BLOCK` rows (one empty table where there are none);
    `before`: the rows of the file before these, for an error's row number."""
    made = 0
    chunk: list[dict[str, t.Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == ROWS_PER_BLOCK:
            yield _table(chunk, functools.partial(_plus, before, made))
            made, chunk = made + len(chunk), []
    if chunk or not made:
        yield _table(chunk, functools.partial(_plus, before, made))


def _plus(before: t.Callable[[], int], made: int) -> int:
    return before() + made


def _table(rows: list[dict[str, t.Any]], first: t.Callable[[], int]) -> pa.Table:
    """`rows` as a table of every key of theirs; `first`: how many rows came before."""
    import pyarrow as pa

    names = dict.fromkeys(name for row in rows for name in row)  # every row's keys
    if not names:  # rows of `{}`: a table of no columns that still holds them
        return pa.table({"_": pa.nulls(len(rows))}).drop_columns(["_"])
    try:
        return pa.Table.from_pydict({name: [row.get(name) for row in rows] for name in names})
    except UnicodeEncodeError:
        raise BatchInputError(_lone_surrogate(rows, first())) from None
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        raise BatchInputError(_unstorable(rows, names, first())) from None


def _unstorable(rows: list[dict[str, t.Any]], names: t.Iterable[str], first: int) -> str:
    """Which row and column hold the first value that Arrow cannot store with the values
    before it (text where numbers came before, a list that mixes types, a number too
    large): found by halving, as a longer run of a column fails wherever a shorter one does."""
    import pyarrow as pa

    for name in names:
        values = [row.get(name) for row in rows]
        low, high = 0, len(values)  # values[:low] convert; values[:high] may not
        if _converts(values):
            continue
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if _converts(values[:middle]) else (low, middle)
        try:
            pa.array(values[:high])
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as error:
            return (
                f"JSON row {first + high}: column {name!r} holds a value that cannot be "
                f"stored with the rows before it ({type(error).__name__}: {error}); give "
                "each column one type Arrow holds (ints and floats mix, numbers and text "
                "do not, and ints take 64 bits)"
            )
    return "the JSON rows hold values that cannot be stored as one table"


def _converts(values: list[t.Any]) -> bool:
    import pyarrow as pa

    try:
        pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return False
    return True


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
