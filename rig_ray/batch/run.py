"""`run`: prompts from files in, Parquet out, resuming whatever an earlier run left."""

from __future__ import annotations

import contextlib
import logging
import typing as t

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from rig_ray.batch.output import OutputFolder
from rig_ray.batch.pipeline import generate
from rig_ray.batch.plan import pending_generations
from rig_ray.batch.progress import Progress
from rig_ray.batch.prompts import PromptSpec
from rig_ray.batch.source import input_files, read_prompts
from rig_ray.errors import BatchInputError, GenerationError, RigRayError
from rig_ray.generator.registry import get_generator

if t.TYPE_CHECKING:
    import ray.data

DEFAULT_ROWS_PER_PART = 10_000
DEFAULT_SECONDS_PER_PART = 30.0


class BatchSummary(BaseModel):
    """What a batch run did."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    output: str
    """The output folder."""
    rows_in: int
    """Input rows read."""
    generations_written: int
    """Rows (one per generation) this run wrote, failed ones included."""
    skipped: int
    """Generations of these rows already in the output from earlier runs, not made again."""
    failed: int
    """Generations written with an error."""
    input_tokens: int
    output_tokens: int
    wall_s: float
    parts: list[str]
    """The Parquet files this run wrote."""

    def line(self) -> str:
        """The summary in one line, as the CLI prints it."""
        rate = self.output_tokens / max(self.wall_s, 1e-9)
        return (
            f"{self.rows_in:,} rows in, {self.generations_written:,} generations written "
            f"({self.failed:,} failed), {self.skipped:,} skipped as already done; "
            f"{self.output_tokens:,} tokens out in {self.wall_s:.1f}s ({rate:.1f} tok/s) "
            f"-> {self.output}"
        )


def run(
    source: str,
    output: str,
    *,
    progress: bool = True,
    progress_every_s: float = 5.0,
    rows_per_part: int = DEFAULT_ROWS_PER_PART,
    seconds_per_part: float = DEFAULT_SECONDS_PER_PART,
    address: str | None = None,
    **options: t.Any,
) -> BatchSummary:
    """Generate for every row of `source` and write Parquet parts into the folder `output`.

    `source` is a JSONL, Parquet or CSV file, a folder or glob of them, or any URI pyarrow's
    filesystems open; `options` are those of `generate`. A rerun with the same `output` skips
    every (id, generation_index) already written: a job stopped halfway, run again, ends with
    one row per generation. Parts are written every `rows_per_part` rows or
    `seconds_per_part` seconds, and on the way out, whatever stopped the run.

    Starts (or joins, with `address`) Ray when it is not running yet.
    """
    import ray

    input_files(source)  # a bad path fails here, before Ray starts
    for value in options.get("generators") or [options.get("generator")]:
        if isinstance(value, str):
            get_generator(value)  # and so does a bad identifier
    if not ray.is_initialized():
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except ConnectionError as error:
            raise BatchInputError(f"cannot join the Ray cluster at {address!r}: {error}") from error
    with _ray_data_quiet(progress):
        return _run(
            source,
            output,
            progress=progress,
            progress_every_s=progress_every_s,
            rows_per_part=rows_per_part,
            seconds_per_part=seconds_per_part,
            options=options,
        )


def _run(
    source: str,
    output: str,
    *,
    progress: bool,
    progress_every_s: float,
    rows_per_part: int,
    seconds_per_part: float,
    options: dict[str, t.Any],
) -> BatchSummary:
    folder = OutputFolder(output)
    dataset = read_prompts(source)
    done = folder.done_keys()
    try:
        generations = generate(dataset, skip=done, **options)  # lazy: checks the columns
        rows_in, pending = _count(dataset, done, options)
    except RigRayError:
        raise
    except Exception as error:  # the input itself could not be read
        raise BatchInputError(f"cannot read {source!r}: {_cause(error)}", source=source) from error
    skipped = rows_in * int(options.get("num_generations", 1)) - pending
    meter = Progress(pending, every_s=progress_every_s if progress else -1)
    writer = folder.writer(rows_per_part=rows_per_part, seconds_per_part=seconds_per_part)
    input_tokens = 0
    if pending == 0:  # all done already: no model is loaded at all
        return _summary(output, rows_in, skipped, meter, input_tokens, writer.written)
    try:
        with meter.ticking():
            for batch in generations.iter_batches(batch_size=None, batch_format="pyarrow"):
                table = t.cast(pa.Table, batch)
                nulls = pc.count(table.column("error"), mode="only_null").as_py()
                tokens = pc.sum(table.column("output_tokens")).as_py() or 0
                input_tokens += pc.sum(table.column("input_tokens")).as_py() or 0
                writer.add(table)
                meter.add(table.num_rows, table.num_rows - nulls, tokens)
    except RigRayError:
        raise
    except Exception as error:
        raise GenerationError(
            f"the batch job stopped: {_cause(error)} "
            f"({meter.rows:,} generations were written to {output}; run again to resume)"
        ) from error
    finally:
        writer.flush()
    meter.finish()
    return _summary(output, rows_in, skipped, meter, input_tokens, writer.written)


def _count(
    dataset: ray.data.Dataset, done: frozenset[str], options: dict[str, t.Any]
) -> tuple[int, int]:
    """Input rows, and the generations of them not in the output yet.

    Without earlier output every generation is pending, and counting rows is cheap (Parquet
    footers); with some, the driver streams through the rows' ids once.
    """
    num_generations = int(options.get("num_generations", 1))
    if not done:
        rows_in = dataset.count()
        return rows_in, rows_in * num_generations
    spec = PromptSpec(id_column=options.get("id_column", "id"))
    members = len(options.get("generators") or [None])
    rows_in = pending = 0
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        ids = [spec.row_id(row) for row in t.cast(pa.Table, batch).to_pylist()]
        rows_in += len(ids)
        pending += pending_generations(ids, num_generations, members, options.get("seed"), done)
    return rows_in, pending


def _summary(
    output: str,
    rows_in: int,
    skipped: int,
    meter: Progress,
    input_tokens: int,
    parts: list[str],
) -> BatchSummary:
    return BatchSummary(
        output=output,
        rows_in=rows_in,
        generations_written=meter.rows,
        skipped=skipped,
        failed=meter.failed,
        input_tokens=input_tokens,
        output_tokens=meter.output_tokens,
        wall_s=meter.elapsed_s,
        parts=list(parts),
    )


def _cause(error: BaseException) -> str:
    """The root of an error from a Ray task, in one short line (not Ray's whole traceback)."""
    cause = getattr(error, "cause", None)
    root = cause if isinstance(cause, BaseException) else error
    first = (str(root).strip().splitlines() or [""])[0]
    return f"{type(root).__name__}: {' '.join(first.split())[:500]}"


@contextlib.contextmanager
def _ray_data_quiet(progress: bool) -> t.Iterator[None]:
    """With our own progress line on, Ray Data's bars and execution logs are off meanwhile."""
    if not progress:
        yield
        return
    from ray.data import DataContext
    from ray.util.debug import log_once

    context = DataContext.get_current()
    logger = logging.getLogger("ray.data")
    saved = context.enable_progress_bars, context.print_on_execution_start, logger.level
    log_once("ray_data_progress_manager_disabled")  # no "bars disabled" warning: we show ours
    context.enable_progress_bars = context.print_on_execution_start = False
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved[:2]
        logger.setLevel(saved[2])
