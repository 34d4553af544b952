"""Typed output columns for structured replies.

One Arrow column per field of a parse model (`parse_as`) or per top-level property of a JSON
schema (`json_schema`): int, float, bool and str map onto Arrow's types, lists onto lists,
nested models and objects onto structs. Anything else (dicts, unions of several types, dates)
is written as its JSON text, so no value is lost.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing as t

import pyarrow as pa
from pydantic import BaseModel

from rig_ray.errors import BatchInputError

PARSED_PREFIX = "parsed_"
"""Put before a parsed column whose name an output or input column already has."""
PARSE_RETRIES = "parse_retries"
"""The column with how many times each reply was asked for again."""

_SCALARS: dict[t.Any, pa.DataType] = {
    bool: pa.bool_(),
    int: pa.int64(),
    float: pa.float64(),
    str: pa.string(),
}
_JSON_SCALARS = {
    "boolean": pa.bool_(),
    "integer": pa.int64(),
    "number": pa.float64(),
    "string": pa.string(),
}
_JSON_TEXT = pa.string()


@dataclasses.dataclass(frozen=True)
class TypedColumn:
    """One output column: its name, the key of the value it holds, and its Arrow type."""

    name: str
    key: str
    type: pa.DataType
    as_json: bool = False
    """Written as JSON text (a type with no Arrow equivalent here)."""

    def cell(self, values: t.Mapping[str, t.Any] | None) -> t.Any:
        if values is None or values.get(self.key) is None:
            return None
        value = values[self.key]
        return json.dumps(value, default=str, sort_keys=True) if self.as_json else value


def model_columns(model: type[BaseModel]) -> list[tuple[str, pa.DataType, bool]]:
    """(field, Arrow type, as_json) for every field of a pydantic model, in order."""
    return [(name, *_annotation_type(field.annotation)) for name, field in _fields(model)]


def schema_columns(schema: t.Mapping[str, t.Any]) -> list[tuple[str, pa.DataType, bool]]:
    """(property, Arrow type, as_json) for every top-level property of an object JSON schema."""
    properties = schema.get("properties")
    if schema.get("type", "object") != "object" or not isinstance(properties, t.Mapping):
        raise BatchInputError(
            "json_schema must describe an object with 'properties' (one column each)"
        )
    definitions = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    return [(name, *_schema_type(sub, definitions, depth=0)) for name, sub in properties.items()]


def name_columns(
    fields: t.Sequence[tuple[str, pa.DataType, bool]], taken: t.Iterable[str]
) -> list[TypedColumn]:
    """Output columns for `fields`: each named after its field, with `PARSED_PREFIX` put
    before a name that is `taken` (by an output or input column) until it is free."""
    used = set(taken)
    columns = []
    for key, arrow_type, as_json in fields:
        name = key
        while name in used:
            name = PARSED_PREFIX + name
        used.add(name)
        columns.append(TypedColumn(name=name, key=key, type=arrow_type, as_json=as_json))
    return columns


def typed_array(column: TypedColumn, values: t.Sequence[t.Mapping[str, t.Any] | None]) -> pa.Array:
    """The column's cells for every row (None: a row with nothing parsed)."""
    return pa.array([column.cell(v) for v in values], type=column.type)


def check_cells(columns: t.Sequence[TypedColumn], values: t.Mapping[str, t.Any]) -> str | None:
    """Why one row's values do not fit the columns' types (None: they do)."""
    for column in columns:
        try:
            pa.array([column.cell(values)], type=column.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as e:
            return f"{column.key!r} does not fit {column.type} ({' '.join(str(e).split())})"
    return None


# -- pydantic annotations ------------------------------------------------------------------


def _fields(model: type[BaseModel]) -> list[tuple[str, t.Any]]:
    return list(model.model_fields.items())


def _annotation_type(annotation: t.Any, depth: int = 0) -> tuple[pa.DataType, bool]:
    """The Arrow type of a field annotation, and whether it must be written as JSON."""
    if depth > 8:
        return _JSON_TEXT, True
    origin = t.get_origin(annotation)
    if origin is t.Annotated:
        return _annotation_type(t.get_args(annotation)[0], depth)
    if origin in (t.Union, types.UnionType):
        options = [a for a in t.get_args(annotation) if a is not type(None)]
        if len(options) == 1:
            return _annotation_type(options[0], depth)
        return _JSON_TEXT, True
    if origin is t.Literal:
        kinds = {type(v) for v in t.get_args(annotation)}
        if len(kinds) == 1 and kinds <= set(_SCALARS):
            return _SCALARS[kinds.pop()], False
        return _JSON_TEXT, True
    if origin in (list, set, frozenset):
        (item,) = t.get_args(annotation) or (t.Any,)
        item_type, as_json = _annotation_type(item, depth + 1)
        return (pa.list_(item_type), False) if not as_json else (_JSON_TEXT, True)
    if annotation in _SCALARS:
        return _SCALARS[annotation], False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        members = [(n, *_annotation_type(f.annotation, depth + 1)) for n, f in _fields(annotation)]
        if not members or any(as_json for _, _, as_json in members):
            return _JSON_TEXT, True
        return pa.struct([pa.field(n, ty) for n, ty, _ in members]), False
    return _JSON_TEXT, True


# -- JSON schemas --------------------------------------------------------------------------


def _schema_type(
    schema: t.Any, definitions: t.Mapping[str, t.Any], depth: int
) -> tuple[pa.DataType, bool]:
    if not isinstance(schema, t.Mapping) or depth > 8:
        return _JSON_TEXT, True
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _schema_type(definitions.get(ref.rsplit("/", 1)[-1]), definitions, depth + 1)
    options = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(options, list):
        real = [o for o in options if not (isinstance(o, t.Mapping) and o.get("type") == "null")]
        return _schema_type(real[0], definitions, depth) if len(real) == 1 else (_JSON_TEXT, True)
    kind = schema.get("type")
    if isinstance(kind, list):
        real_kinds = [k for k in kind if k != "null"]
        kind = real_kinds[0] if len(real_kinds) == 1 else None
    if kind in _JSON_SCALARS:
        return _JSON_SCALARS[kind], False
    if "enum" in schema and kind is None:
        kinds = {type(v) for v in schema["enum"]}
        if len(kinds) == 1 and kinds <= set(_SCALARS):
            return _SCALARS[kinds.pop()], False
    if kind == "array":
        item_type, as_json = _schema_type(schema.get("items"), definitions, depth + 1)
        return (pa.list_(item_type), False) if not as_json else (_JSON_TEXT, True)
    properties = schema.get("properties")
    if kind == "object" and isinstance(properties, t.Mapping) and properties:
        members = [(n, *_schema_type(s, definitions, depth + 1)) for n, s in properties.items()]
        if any(as_json for _, _, as_json in members):
            return _JSON_TEXT, True
        return pa.struct([pa.field(n, ty) for n, ty, _ in members]), False
    return _JSON_TEXT, True
