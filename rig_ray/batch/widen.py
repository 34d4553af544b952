"""One schema for tables whose column types differ: every column of each, widened to take
every table's values (ints and floats join; numbers and text do not).

A JSON file's rows are turned into Arrow a block at a time, and each file (or byte range)
of an input apart, so the tables of one input can disagree on their columns. pyarrow's
folder reader reads every Parquet part with the first part's schema, and Ray Data joins
blocks without widening ints into floats, so the tables are given one schema first.
"""

from __future__ import annotations

import typing as t

import pyarrow as pa

from rig_ray.errors import BatchInputError

Where = t.Callable[[], str]
"""Names the first row of the table being joined ("input row 10,001"), asked only when an
error needs it."""


def widened(schema: pa.Schema, other: pa.Schema, where: Where) -> pa.Schema:
    """`schema` joined with `other`'s columns; a `BatchInputError` naming the column whose
    types cannot join, from the row `where()` names on."""
    if other.equals(schema):
        return schema
    try:
        return pa.unify_schemas([schema, other], promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        raise BatchInputError(_clash(schema, other, where())) from None


def conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with `schema`'s columns in `schema`'s types (null where it has none of its
    own); `schema` must be one that `widened` made from `table`'s."""
    if table.schema.equals(schema):
        return table
    if not table.num_columns:  # rows of `{}`: a concatenation would drop them
        columns = {field.name: pa.nulls(table.num_rows, field.type) for field in schema}
        return pa.table(columns, schema=schema)
    try:
        return pa.concat_tables([schema.empty_table(), table], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:  # an int that no float holds
        raise BatchInputError(
            f"the input's rows cannot share one schema ({error}); give each column one "
            "type in every file"
        ) from None


class OneSchema:
    """The schema of the tables seen so far (`schema`, None before the first), each column
    widened to take all their values; `varies`: whether any two of them differed."""

    def __init__(self) -> None:
        self.schema: pa.Schema | None = None
        self.varies = False

    def add(self, schema: pa.Schema, where: Where) -> None:
        """Join the schema of the next table, whose first row `where()` names."""
        if self.schema is None:
            self.schema = schema
            return
        self.varies = self.varies or not schema.equals(self.schema)
        self.schema = widened(self.schema, schema, where)

    def conform(self, table: pa.Table) -> pa.Table:
        """`table` (one of those added) in the one schema."""
        return table if self.schema is None else conformed(table, self.schema)


def _clash(before: pa.Schema, schema: pa.Schema, where: str) -> str:
    """Which column of `schema` cannot take the type it had in the rows `before` it."""
    for field in schema:
        if field.name not in before.names:
            continue
        earlier = before.field(field.name)
        try:
            pa.unify_schemas(
                [pa.schema([earlier]), pa.schema([field])], promote_options="permissive"
            )
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            return (
                f"column {field.name!r} holds {field.type} from {where} on, but "
                f"{earlier.type} in the rows before it; give the column one type in every "
                "file (ints and floats mix, numbers and text do not)"
            )
    return f"the input's columns change type at {where}; give each one type"


__all__: t.Sequence[str] = ["OneSchema", "Where", "conformed", "widened"]
