"""`run`: prompts from files in, Parquet out, resuming whatever an earlier run left."""

from __future__ import annotations

import contextlib
import logging
import typing as t

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from rig_ray.batch.lock import FolderLock
from rig_ray.batch.manifest import Manifest, check_manifest, pinned_identifier, pinned_params
from rig_ray.batch.output import OutputFolder, PartWriter
from rig_ray.batch.parsed import DEFAULT_MAX_PARSE_RETRIES, StructuredSpec, with_json_schema
from rig_ray.batch.pipeline import generate, generator_members
from rig_ray.batch.placement import fit_cpus, join, quiet_ray_logs
from rig_ray.batch.prepare import plan_rows
from rig_ray.batch.progress import Progress
from rig_ray.batch.prompts import PromptSpec
from rig_ray.batch.source import input_files, read_prompts
from rig_ray.cluster.remote_generator import describe
from rig_ray.errors import BatchInputError, GenerationError, RigRayError
from rig_ray.generator.base import GenerateParams, Generator
from rig_ray.redaction import redact, redact_logs

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
        rate = self.output_tokens / max(self.wall_s, 1e-9)
        line = (
            f"{self.rows_in:,} rows in, {self.generations_written:,} generations written "
            f"({self.failed:,} failed), {self.skipped:,} skipped as already done; "
            f"{self.output_tokens:,} tokens out in {self.wall_s:.1f}s ({rate:.1f} tok/s) "
            f"-> {redact(self.output)}"
        )
        if self.failed_in_output:
            line += (
                f"; {self.failed_in_output:,} failed rows in the output: run again with "
                "--retry-failed (retry_failed=True) to make them again"
            )
        return line


def run(
    source: str,
    output: str,
    *,
    progress: bool = True,
    progress_every_s: float = 5.0,
    rows_per_part: int = DEFAULT_ROWS_PER_PART,
    seconds_per_part: float = DEFAULT_SECONDS_PER_PART,
    address: str | None = None,
    retry_failed: bool = False,
    num_cpus: float | None = None,
    **options: t.Any,
) -> BatchSummary:
    """Generate for every row of `source` and write Parquet parts into the folder `output`.

    `source` is a JSONL, Parquet or CSV file, a folder or glob of them, or any URI pyarrow's
    filesystems open; `options` are those of `generate`. A rerun with the same `output` skips
    every (id, generation_index) already written: a job stopped halfway, run again, ends with
    one row per generation; with `retry_failed`, generations written with an error are made
    again and replace their failed rows. Parts are written every `rows_per_part` rows or
    `seconds_per_part` seconds, and on the way out, whatever stopped the run.

    The folder's manifest refuses a rerun with other settings, and a lock keeps a second run
    out while this one runs. `num_cpus` per actor, left None, fits the cluster. Runs on the
    Ray already initialised, else joins `address` (or `RAY_ADDRESS`), else starts a local Ray.
    """
    input_files(source)  # a bad path fails here, before Ray starts
    _check_num_generations(options.get("num_generations", 1))
    members = generator_members(options.get("generator"), options.get("generators"))
    structured = StructuredSpec.build(
        options.get("parse_as"),
        options.get("json_schema"),
        options.get("max_parse_retries", DEFAULT_MAX_PARSE_RETRIES),
    )
    with_json_schema(members, options.get("params"), structured)  # refused before Ray starts
    folder = OutputFolder(output)  # and so does an output URI that cannot be opened
    quiet_ray_logs()
    join(address)
    redact_logs()
    with _ray_data_quiet(progress):
        dataset = read_prompts(source, id_column=options.get("id_column", "id"))
        spec = _resolve(dataset, source, options)
        manifest = _manifest(members, spec, structured, options)
        with FolderLock(folder.filesystem, folder.path, output) as lock:
            return _run(
                folder,
                lock,
                dataset,
                spec,
                manifest,
                _Settings(
                    progress_every_s=progress_every_s if progress else -1,
                    rows_per_part=rows_per_part,
                    seconds_per_part=seconds_per_part,
                    retry_failed=retry_failed,
                    num_cpus=num_cpus,
                ),
                options,
            )


class _Settings(t.NamedTuple):
    progress_every_s: float
    rows_per_part: int
    seconds_per_part: float
    retry_failed: bool
    num_cpus: float | None


def _check_num_generations(value: t.Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BatchInputError(
            f"num_generations must be a whole number of at least 1, not {value!r}"
        )


def _resolve(dataset: ray.data.Dataset, source: str, options: dict[str, t.Any]) -> PromptSpec:
    try:
        columns = tuple(dataset.columns() or ())
    except Exception as error:  # the input itself could not be read
        raise BatchInputError(f"cannot read {source!r}: {_cause(error)}", source=source) from error
    return PromptSpec(
        template=options.get("template"),
        system=options.get("system"),
        messages_column=options.get("messages_column"),
        id_column=options.get("id_column", "id"),
        params_column=options.get("params_column"),
    ).resolve(columns)


def _manifest(
    members: list[Generator],
    spec: PromptSpec,
    structured: StructuredSpec | None,
    options: dict[str, t.Any],
) -> Manifest:
    params = options.get("params") or GenerateParams()
    return Manifest(
        generators=[pinned_identifier(redact(describe(member))) for member in members],
        num_generators=len(members),
        template=spec.template,
        system=spec.system,
        messages_column=spec.messages_column,
        params=pinned_params(redact(params.model_dump(mode="json", exclude_none=True))),
        seed=options.get("seed"),
        num_generations=int(options.get("num_generations", 1)),
        id_column=spec.id_column,
        params_column=spec.params_column,
        structured=None
        if structured is None
        else {"parse_as": structured.model_key, "json_schema": structured.json_schema},
    )


def _run(
    folder: OutputFolder,
    lock: FolderLock,
    dataset: ray.data.Dataset,
    spec: PromptSpec,
    manifest: Manifest,
    settings: _Settings,
    options: dict[str, t.Any],
) -> BatchSummary:
    check_manifest(folder.filesystem, folder.path, folder.location, manifest, write=False)
    scan = folder.scan()
    if scan.repeated:  # a retry that stopped before cleaning up left two rows for some keys
        folder.compact(scan)
        scan = folder.scan()
    try:
        plan = plan_rows(
            dataset,
            spec,
            num_generations=manifest.num_generations,
            finished=scan.finished(retry_failed=settings.retry_failed),
        )
    except RigRayError:
        raise
    except Exception as error:  # the input itself could not be read
        raise BatchInputError(
            f"cannot read the input: {_cause(error)}", source=folder.location
        ) from error
    retried = scan.failed_count() if settings.retry_failed else 0
    skipped = plan.rows_in * manifest.num_generations - plan.pending
    meter = Progress(plan.pending, every_s=settings.progress_every_s)
    writer = folder.writer(
        rows_per_part=settings.rows_per_part,
        seconds_per_part=settings.seconds_per_part,
        before_part=_BeforePart(folder, lock, manifest),
    )
    counts = _Counts(earlier_failed=scan.failed_count() - retried)
    if plan.dataset is not None:  # else all is done already: no model is loaded at all
        actors = manifest.num_generators * int(options.get("replicas", 1))
        num_cpus, waiting = fit_cpus(settings.num_cpus, options.get("num_gpus", 0), actors)
        meter.note = waiting
        generations = generate(plan.dataset, num_cpus=num_cpus, **options)
        _write(generations, writer, meter, counts, folder.location)
        if retried:
            folder.compact()  # the retried generations' old failed rows go
    return _summary(folder.location, plan.rows_in, skipped, meter, counts, writer.written)


class _BeforePart:
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


class _Counts:
    def __init__(self, earlier_failed: int) -> None:
        self.earlier_failed = earlier_failed
        self.input_tokens = 0


def _write(
    generations: ray.data.Dataset,
    writer: PartWriter,
    meter: Progress,
    counts: _Counts,
    location: str,
) -> None:
    try:
        with meter.ticking():
            for batch in generations.iter_batches(batch_size=None, batch_format="pyarrow"):
                table = t.cast(pa.Table, batch)
                nulls = pc.count(table.column("error"), mode="only_null").as_py()
                tokens = pc.sum(table.column("output_tokens")).as_py() or 0
                counts.input_tokens += pc.sum(table.column("input_tokens")).as_py() or 0
                writer.add(table)
                meter.add(table.num_rows, table.num_rows - nulls, tokens)
    except RigRayError:
        raise
    except Exception as error:
        raise GenerationError(
            f"the batch job stopped: {_cause(error)} "
            f"({meter.rows:,} generations were written to {location}; run again to resume)"
        ) from error
    finally:
        writer.flush()
    meter.finish()


def _summary(
    output: str,
    rows_in: int,
    skipped: int,
    meter: Progress,
    counts: _Counts,
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


def _cause(error: BaseException) -> str:
    """The root of an error from a Ray task, in one short line (not Ray's whole traceback)."""
    cause = getattr(error, "cause", None)
    root = cause if isinstance(cause, BaseException) else error
    first = (str(root).strip().splitlines() or [""])[0]
    return redact(f"{type(root).__name__}: {' '.join(first.split())[:500]}")


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
