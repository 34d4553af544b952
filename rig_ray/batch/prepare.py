"""The driver's pass over the input before any model loads: ids, checks, what is left to do.

Rows are read once, in input order. Each gets its id (its id column's value as text, else the
hash of everything that changes its output: its rendered conversation and its own params;
identical rows are numbered among themselves only, `#1`, `#2`, ..., so rows inserted or
appended elsewhere never change an id), a duplicated id is refused, and each row keeps only
the generation indices not finished yet.
Rows with nothing left are dropped here, so the generate stage holds no record of what is done.
The kept rows leave with one schema, whatever file or block they came from (see `_Schema`).
"""

from __future__ import annotations

import typing as t

import pyarrow as pa
import pyarrow.compute as pc

from rig_ray.batch.data_tasks import Block, from_blocks, iter_tables, put_block
from rig_ray.batch.done_ids import Masks
from rig_ray.batch.prompts import PromptSpec, content_id, id_text, table_rows
from rig_ray.batch.widen import OneSchema, conformed
from rig_ray.errors import BatchInputError

if t.TYPE_CHECKING:
    import ray.data

ID_COLUMN = "__rig_ray_id"
"""Each prepared row's id, for the generate stage."""
TODO_COLUMN = "__rig_ray_todo"
"""Each prepared row's generation indices still to make."""
INTERNAL_COLUMNS = (ID_COLUMN, TODO_COLUMN)


class Plan(t.NamedTuple):
    """The rows still to generate for (None when there are none), and the counts."""

    dataset: ray.data.Dataset | None
    rows_in: int
    pending: int
    wanted: int
    """The generations the rows ask for, those done already included."""
    columns: tuple[str, ...] = ()
    """Every input column, of every row (those done already included)."""


def row_generations(value: t.Any, num_generations: int) -> int:
    """A row's own number of generations from its `generations_column` value: at most
    `num_generations`, at least 1; a missing value means `num_generations`."""
    if value is None:
        return num_generations
    return max(1, min(int(value), num_generations))


class _Ids:
    """Assigns ids in input order and remembers them compactly, to find duplicates."""

    def __init__(self, spec: PromptSpec) -> None:
        self._spec = spec
        self._repeats: dict[str, int] = {}
        self.chunks: list[pa.Array] = []

    def assign(self, table: pa.Table) -> pa.Array:
        """The ids of a block's rows, in order. Only the id column is read, and only the
        rows without an id become Python objects (to hash what they hold)."""
        column = self._spec.id_column
        given = table.column(column) if column in table.column_names else None
        if given is not None and pa.types.is_string(given.type):
            whole = given.combine_chunks()
            if whole.null_count == 0 and not pc.any(pc.equal(whole, "")).as_py():
                self.chunks.append(whole)  # every row has its id, as text already
                return whole
        values = given.to_pylist() if given is not None else [None] * table.num_rows
        missing = [n for n, value in enumerate(values) if value is None or value == ""]
        contents = table_rows(table.take(pa.array(missing, type=pa.int64()))) if missing else []
        for number, row in zip(missing, contents, strict=True):  # an empty CSV cell is no id
            base = content_id(self._spec.content_key(row))
            seen = self._repeats.get(base, 0)
            self._repeats[base] = seen + 1
            values[number] = f"{base}#{seen}" if seen else base
        array = pa.array([id_text(value) for value in values], type=pa.string())
        self.chunks.append(array)
        return array

    def check_unique(self) -> None:
        """`BatchInputError` naming the first id (in input order) that appears twice."""
        if not self.chunks:
            return
        every = pa.chunked_array(self.chunks, type=pa.string())
        counts = pc.value_counts(every)
        repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        if len(repeated) == 0:
            return
        first = pc.index(pc.is_in(every, value_set=repeated), True).as_py()
        row_id = every[first].as_py()
        raise BatchInputError(
            f"the id {row_id!r} appears more than once in column {self._spec.id_column!r} "
            f"(ids are compared as text, so 1 and '1' are the same); give every row its own id",
            column=self._spec.id_column,
        )


def plan_rows(
    dataset: ray.data.Dataset,
    spec: PromptSpec,
    *,
    num_generations: int,
    finished: Masks | t.Mapping[str, int],
    generations_column: str | None = None,
    read: t.Callable[[int], None] | None = None,
) -> Plan:
    """Read `dataset` once, in order, and keep the rows with generations still to make.

    `finished` maps an id to a bitmask of its generation indices not to make again. The kept
    rows get `ID_COLUMN` and `TODO_COLUMN` and go to Ray's object store as they are read. With
    `generations_column`, each row asks for its own number of generations (`row_generations`).
    `read` is told the rows of each block as it is read.
    """

    dataset.context.execution_options.preserve_order = True  # ids of repeats depend on order
    done = finished if isinstance(finished, Masks) else Masks.of_mapping(finished)
    ids = _Ids(spec)
    schema = _Schema()
    blocks: list[Block] = []
    rows_in = pending = wanted = 0
    every = list(range(num_generations))  # one list for all the rows with nothing done
    for table in iter_tables(dataset):
        if not table.num_rows:  # an empty file's block: no rows, and maybe no columns
            continue
        schema.add_block(table.schema, rows_in)
        id_array = ids.assign(table)
        counts = (
            [row_generations(v, num_generations) for v in table[generations_column].to_pylist()]
            if generations_column is not None
            else [num_generations] * table.num_rows
        )
        todo = [
            _left(mask, count, every)
            for mask, count in zip(done.masks(id_array), counts, strict=True)
        ]
        rows_in += table.num_rows
        if read is not None:
            read(table.num_rows)
        wanted += sum(counts)
        pending += sum(len(indices) for indices in todo)
        keep = pa.array([bool(indices) for indices in todo], type=pa.bool_())
        if table.num_rows and pc.any(keep).as_py():
            table = table.append_column(ID_COLUMN, id_array)
            table = table.append_column(TODO_COLUMN, pa.array(todo, type=pa.list_(pa.int32())))
            blocks.append(put_block(table.filter(keep)))
    ids.check_unique()
    columns = () if schema.schema is None else tuple(schema.schema.names)
    if not blocks:
        return Plan(None, rows_in, 0, wanted, columns)
    return Plan(from_blocks(schema.conform_blocks(blocks)), rows_in, pending, wanted, columns)


class _Schema(OneSchema):
    """One schema for every row of the input. Files (and a JSON file's byte ranges) get
    their column types each from their own rows, so one may hold a column that another
    lacks, or ints where another holds floats. pyarrow's folder reader (and pandas, through
    it) reads every part with the first part's schema, so parts written with such
    differences fail there or lose a column. Every kept block is made to hold every column,
    each widened to take every block's values, as `PartWriter` widens the tables of one
    part. Columns whose types cannot be joined (numbers and text) are a `BatchInputError`
    before any model loads."""

    def add_block(self, schema: pa.Schema, first_row: int) -> None:
        """Join the schema of a block whose first row is the input's `first_row` (from 0)."""
        self.add(schema, lambda: f"input row {first_row + 1}")

    def conform_blocks(self, blocks: list[Block]) -> list[Block]:
        """`blocks` (the kept rows, with this module's two columns), each with the one
        schema of the whole input, the rows without work left included."""
        if not self.varies or self.schema is None:
            return blocks
        import ray

        # the input's joined schema, and the two columns every kept block has
        whole = pa.unify_schemas(
            [self.schema, blocks[0].metadata.schema], promote_options="permissive"
        )
        return [
            block
            if block.metadata.schema.equals(whole)
            else put_block(conformed(ray.get(block.ref), whole))
            for block in blocks
        ]


def _left(done: int, count: int, every: list[int]) -> list[int]:
    """The generation indices below `count` that the bitmask `done` lacks; `every` (all the
    indices, one list shared by the rows) where none is done and the row asks for them all."""
    if not done and count == len(every):
        return every
    return [g for g in range(count) if not done >> g & 1]
