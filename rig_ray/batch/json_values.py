"""JSON text as rows, and rows as Arrow tables: numbers kept as written for the id, and
errors that name the line, the row or the column at fault."""

from __future__ import annotations

import functools
import json
import typing as t

from rig_ray.errors import BatchInputError

if t.TYPE_CHECKING:
    import pyarrow as pa

ROWS_PER_BLOCK = 10_000
"""JSON rows turned into Arrow at a time: only that many are ever held as Python objects."""

Before = t.Callable[[], tuple[int, int]]
"""The lines and the JSON rows of the file before a range, counted when an error asks."""


class _Number(str):
    """A JSON number as written; turned into an int or float everywhere but in the id."""


def json_lines(
    lines: t.Iterable[bytes], id_column: str, before: Before
) -> t.Iterator[dict[str, t.Any]]:
    """The rows of JSON `lines` (blank ones skipped); errors name the line or row in the
    whole file, `before` giving the lines and rows that come before these."""
    decoder = json_decoder()
    row = 0
    for number, line in enumerate(lines, start=1):
        text = utf8_text(line, number, before)
        if not text.strip():
            continue
        value = decoded(decoder, text, functools.partial(_line, before, number))
        yield as_row(value, row, id_column, before)
        row += 1


def _line(before: Before, number: int) -> str:
    return f"line {before()[0] + number}"


def json_decoder() -> json.JSONDecoder:
    return json.JSONDecoder(parse_int=_Number, parse_float=_Number)


def decoded(decoder: json.JSONDecoder, text: str, where: str | t.Callable[[], str]) -> t.Any:
    """`text` decoded, or a `BatchInputError` that names `where` it is."""
    try:
        return decoder.decode(text)
    except RecursionError:
        raise BatchInputError(f"{_said(where)} is nested too deeply to read") from None
    except ValueError as error:
        raise BatchInputError(f"{_said(where)} is not JSON ({error})") from None


def _said(where: str | t.Callable[[], str]) -> str:
    return where if isinstance(where, str) else where()


def utf8_text(data: bytes, line: int, before: Before | None = None) -> str:
    """`data`, the text of a file from `line` on, decoded; a `BatchInputError` naming the
    line where it is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        earlier = before()[0] if before is not None else 0
        at = earlier + line + data[: error.start].count(b"\n")
        raise BatchInputError(f"line {at} is not UTF-8 text ({error.reason})") from None


def as_row(
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


def as_tables(
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
