"""Ray Data's own tasks of a batch job: the CPUs they ask for, and how the driver reads
their blocks and stops them (`iter_tables`).

A job's Ray Data tasks only read the input files and cut the rows into batches; its engines
run in actors of their own, and the rows it keeps go to Ray's object store described by the
driver, with no task at all (`put_block`, `from_blocks`). Ray Data gives each task one CPU
unless told otherwise, so a job started beside engines that already hold every CPU of the
cluster (a `/v1/batches` job beside the Serve replicas it sends its rows to) would wait
forever for its first read. Such a job sets `data_cpus=0`; None keeps Ray Data's default.
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    import pyarrow as pa
    import ray.data


def remote_args(data_cpus: float | None) -> dict[str, t.Any]:
    """The remote args of a data task: `num_cpus` where one is given, else Ray Data's."""
    return {} if data_cpus is None else {"num_cpus": data_cpus}


class FileRead(t.NamedTuple):
    """One read task of a dataset read from files: what it runs, and the file it reads."""

    read: t.Callable[[], t.Iterator[pa.Table]]
    path: str
    size: int | None
    """The bytes it reads (None: not known)."""


def read_files(name: str, reads: t.Sequence[FileRead], args: dict[str, t.Any]) -> ray.data.Dataset:
    """A lazy dataset of one Ray Data read task per `reads`, in order, named `name` in Ray
    Data's stats; `args`: the tasks' remote args (`remote_args`)."""
    import ray.data
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class FileSource(Datasource):  # type: ignore[misc]
        def get_name(self) -> str:
            return name

        def estimate_inmemory_data_size(self) -> int | None:
            return sum(read.size or 0 for read in reads) or None

        def get_read_tasks(self, parallelism: int, *args: t.Any, **kwargs: t.Any) -> list[t.Any]:
            return [
                ReadTask(
                    read.read,
                    BlockMetadata(
                        num_rows=None,
                        size_bytes=read.size,
                        input_files=(read.path,),
                        exec_stats=None,
                    ),
                )
                for read in reads
            ]

    return ray.data.read_datasource(FileSource(), **args)


def split_rows(dataset: ray.data.Dataset, rows: int, data_cpus: float | None) -> ray.data.Dataset:
    """`dataset` in blocks of `rows` rows, streamed (`Dataset.repartition` with
    `target_num_rows_per_block`), its tasks asking `data_cpus`.

    `Dataset.repartition` takes no remote args, so with `data_cpus` the same logical
    operator is built here with them (Ray 2.60's `StreamingRepartition`; the tests run a job
    with every CPU held, which only ends if the operator got them).
    """
    if data_cpus is None:
        return dataset.repartition(target_num_rows_per_block=rows)
    from ray.data import Dataset
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators.map_operator import StreamingRepartition

    operator = StreamingRepartition(
        target_num_rows_per_block=rows,
        input_dependencies=[dataset._logical_plan.dag],
        ray_remote_args=remote_args(data_cpus),
    )
    return Dataset._from_parent(dataset, LogicalPlan(operator, dataset.context))


def iter_tables(dataset: ray.data.Dataset) -> t.Iterator[pa.Table]:
    """Each block of `dataset` as a table, as its run makes them. A consumer that stops
    early (an error, a `break`) has the run shut down without force.

    Ray Data's own `iter_batches` (and `columns()`) shut a run stopped early down by force,
    killing the tasks still running; a killed task whose reply lands at that moment fails a
    check in Ray's driver (2.60: `Tried to complete task that was not pending`), and the
    driver process ends on the spot. Tasks asked to stop without force end on their own.
    """
    import ray
    from ray.data.block import BlockAccessor

    bundles, _, executor = dataset._execute_to_iterator()
    try:
        for bundle in bundles:
            for entry, part in zip(bundle.blocks, bundle.slices, strict=True):
                table = BlockAccessor.for_block(ray.get(entry.ref)).to_arrow()
                if part is not None:
                    table = table.slice(part.start_offset, part.end_offset - part.start_offset)
                yield table
    finally:
        if executor is not None:
            executor.shutdown(force=False)


def dataset_columns(dataset: ray.data.Dataset) -> tuple[str, ...]:
    """The columns of `dataset`'s first rows: those Ray knows without running it, else those
    of its first row (`Dataset.columns()` would stop the run by force; see `iter_tables`)."""
    known = dataset.schema(fetch_if_missing=False)
    if known is not None:
        return tuple(known.names)
    for table in iter_tables(dataset.limit(1)):
        if table.num_columns:
            return tuple(table.column_names)
    return ()


class Block(t.NamedTuple):
    """A table put in Ray's object store, with Ray Data's description of it."""

    ref: t.Any
    metadata: t.Any


def put_block(table: pa.Table) -> Block:
    """Put `table` in Ray's object store and describe it here, where it is at hand
    (`ray.data.from_arrow_refs` instead runs a one-CPU task per table to read that back)."""
    import ray
    from ray.data.block import BlockExecStats, BlockMetadataWithSchema

    stats = BlockExecStats.builder().build()
    return Block(ray.put(table), BlockMetadataWithSchema.from_block(table, block_exec_stats=stats))


def from_blocks(blocks: t.Sequence[Block]) -> ray.data.Dataset:
    """A dataset of `blocks`, as `ray.data.from_arrow_refs` makes it, with no task."""
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators.from_operators import FromArrow
    from ray.data._internal.stats import DatasetStats
    from ray.data.context import DataContext
    from ray.data.dataset import MaterializedDataset

    refs = [block.ref for block in blocks]
    metadata = [block.metadata for block in blocks]
    stats = DatasetStats(metadata={"FromArrow": metadata}, parent=None)
    context = DataContext.get_current().copy()
    return MaterializedDataset(LogicalPlan(FromArrow(refs, metadata), context), context, stats)


__all__: t.Sequence[str] = [
    "Block",
    "dataset_columns",
    "from_blocks",
    "iter_tables",
    "put_block",
    "remote_args",
    "split_rows",
]
