"""A run's generations written into its output folder a part at a time, and counted into
its `BatchSummary`."""

from __future__ import annotations

import threading
import typing as t

import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from rig_ray.batch.causes import cause_line
from rig_ray.batch.data_tasks import iter_tables
from rig_ray.batch.lock import FolderLock
from rig_ray.batch.manifest import Manifest, check_manifest
from rig_ray.batch.output import OutputFolder, PartWriter
from rig_ray.batch.progress import Progress
from rig_ray.errors import GenerationError, RigRayError
from rig_ray.redaction import redact

if t.TYPE_CHECKING:
    import ray.data

    from rig_ray.batch.pipeline_summary import StageSummary


def counts_text(summary: BatchSummary | StageSummary) -> str:
    """A summary's counts, as its one line says them."""
    rate = summary.output_tokens / max(summary.wall_s, 1e-9)
    return (
        f"{summary.rows_in:,} rows in, {summary.generations_written:,} generations written "
        f"({summary.failed:,} failed), {summary.skipped:,} skipped as already done; "
        f"{summary.output_tokens:,} tokens out in {summary.wall_s:.1f}s ({rate:.1f} tok/s)"
    )


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
    """Generations this run wrote with an error."""
    failed_in_output: int = 0
    """Failed generations in the whole output folder after this run (`retry_failed` makes
    them again)."""
    input_tokens: int
    output_tokens: int
    wall_s: float
    parts: list[str]
    """The Parquet files this run wrote."""

    def line(self) -> str:
        """The summary in one line, as the CLI prints it."""
        line = f"{counts_text(self)} -> {redact(self.output)}"
        if self.failed_in_output:
            line += (
                f"; {self.failed_in_output:,} failed rows in the output: run again with "
                "--retry-failed (retry_failed=True) to make them again"
            )
        return line


class BeforePart:
    """Before each part: the lock must still be this run's; before the first, the manifest is
    written (checked again: it is the record of what the folder's rows are)."""

    def __init__(self, folder: OutputFolder, lock: FolderLock, manifest: Manifest) -> None:
        self._folder, self._lock, self._manifest = folder, lock, manifest
        self._written = False

    def __call__(self) -> None:
        self._lock.check()
        if not self._written:
            folder = self._folder
            check_manifest(folder.filesystem, folder.path, folder.location, self._manifest)
            self._written = True


class Counts:
    def __init__(self, earlier_failed: int) -> None:
        self.earlier_failed = earlier_failed
        self.input_tokens = 0


def write_generations(
    generations: ray.data.Dataset,
    writer: PartWriter,
    meter: Progress,
    counts: Counts,
    location: str,
    stop: threading.Event | None = None,
) -> None:
    try:
        with meter.ticking():
            for table in iter_tables(generations):
                nulls = pc.count(table.column("error"), mode="only_null").as_py()
                tokens = pc.sum(table.column("output_tokens")).as_py() or 0
                counts.input_tokens += pc.sum(table.column("input_tokens")).as_py() or 0
                writer.add(table)
                meter.add(table.num_rows, table.num_rows - nulls, tokens)
                if stop is not None and stop.is_set():  # leaving ends the dataset's actors
                    break
    except RigRayError:
        raise
    except Exception as error:
        raise GenerationError(
            f"the batch job stopped: {cause_line(error)} "
            f"({meter.rows:,} generations were written to {location}; run again to resume)"
        ) from error
    finally:
        writer.flush()
    meter.finish()


def batch_summary(
    output: str,
    rows_in: int,
    skipped: int,
    meter: Progress,
    counts: Counts,
    parts: list[str],
) -> BatchSummary:
    return BatchSummary(
        output=output,
        rows_in=rows_in,
        generations_written=meter.rows,
        skipped=skipped,
        failed=meter.failed,
        failed_in_output=counts.earlier_failed + meter.failed,
        input_tokens=counts.input_tokens,
        output_tokens=meter.output_tokens,
        wall_s=meter.elapsed_s,
        parts=list(parts),
    )
