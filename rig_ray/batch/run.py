"""`run`: prompts from files in, Parquet out, resuming whatever an earlier run left."""

from __future__ import annotations

import functools
import threading
import typing as t

from rig_ray.batch import openai_files, openai_job
from rig_ray.batch.causes import cause_line, errors_told_once, is_task_error
from rig_ray.batch.console import job_console
from rig_ray.batch.done_ids import Scan
from rig_ray.batch.job_checks import check_apart, check_seconds, check_sizes, check_whole
from rig_ray.batch.lock import FolderLock
from rig_ray.batch.manifest import Manifest, check_manifest, pinned_identifier, pinned_params
from rig_ray.batch.output import OutputFolder
from rig_ray.batch.parsed import DEFAULT_MAX_PARSE_RETRIES, StructuredSpec, with_json_schema
from rig_ray.batch.pipeline import generate, generator_members
from rig_ray.batch.placement import (
    data_task_cpus,
    fit_cpus,
    gpus_in_all,
    gpus_per_actor,
    join,
    size_engines_ahead,
)
from rig_ray.batch.prepare import Plan, plan_rows
from rig_ray.batch.progress import Progress
from rig_ray.batch.prompts import PromptSpec, job_params
from rig_ray.batch.run_writing import (
    BatchSummary,
    BeforePart,
    Counts,
    batch_summary,
    write_generations,
)
from rig_ray.batch.source import input_columns, input_files, read_prompts
from rig_ray.cluster.local_ray import quiet_ray_logs
from rig_ray.cluster.placement import check_resource
from rig_ray.cluster.placement_groups import BatchGroups
from rig_ray.cluster.remote_generator import describe
from rig_ray.errors import BatchInputError, RigRayError
from rig_ray.generator.base import Generator
from rig_ray.generator.params import GenerateParams
from rig_ray.redaction import redact

if t.TYPE_CHECKING:
    import ray.data

DEFAULT_ROWS_PER_PART = 10_000
DEFAULT_SECONDS_PER_PART = 30.0


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
    verbose: bool = False,
    progress_label: str = "rig-ray batch",
    output_format: t.Literal["parquet", "openai"] = "parquet",
    stop: threading.Event | None = None,
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
    out while this one runs. `num_cpus` per actor, left None, fits the cluster; Ray Data's
    own tasks (reading, cutting into batches) ask `data_cpus` each (None: one, or half a
    CPU on a cluster of one; 0 beside engines that hold every CPU, see
    `rig_ray.batch.data_tasks`). Runs on the
    Ray already initialised, else joins `address` (or `RAY_ADDRESS`), else starts a local Ray.
    Progress lines start with `progress_label`.

    The console shows rig_ray's own lines only (its progress line, when `progress`): Ray
    Data's logs and bars and what the actors print (engines' loading bars and warnings) are
    kept out unless `verbose`. Whatever is shown is redacted, and scrubbed with the
    generators' own secrets (see `rig_ray.batch.console`).

    An OpenAI batch file (rows with `custom_id` and `body`) is read as one (see
    `rig_ray.batch.openai_files`); with `output_format="openai"`, `output.jsonl` and
    `errors.jsonl` are written into `output` when the run ends, also when it stops early.
    Each generator has a served name, `names` (one per generator, in order; default: the last
    part of its model path), as `rig-ray serve --name` has; with several generators, each
    line runs on the one its `body.model` names, and a line naming none is an error line
    (`model_not_found`). With one, any model name is accepted and recorded.

    Once `stop` is set (from another thread), the run ends after the batch of generations
    it is writing: what it wrote stays, its summary counts it, and a rerun resumes past it.
    """
    input_files(source)  # a bad path fails here, before Ray starts
    check_apart(source, output)
    options["params"] = job_params(options.get("params"))
    _unresolved_spec(options)
    check_whole("num_generations", options.get("num_generations", 1), BatchInputError)
    check_whole("rows_per_part", rows_per_part, BatchInputError)
    check_seconds("seconds_per_part", seconds_per_part, zero=True, error=BatchInputError)
    check_resource("num_cpus", num_cpus)
    check_resource("data_cpus", options.get("data_cpus"))
    check_sizes(
        options.get("replicas", 1),
        options.get("batch_size"),
        options.get("max_concurrent_batches"),
        options.get("batch_timeout_s"),
    )
    members = generator_members(options.get("generator"), options.get("generators"))
    if output_format not in ("parquet", "openai"):
        raise BatchInputError(f"output_format must be 'parquet' or 'openai', not {output_format!r}")
    names = options.pop("names", None)
    if openai_files.is_openai_batch(source):
        source, options = openai_job.job_options(source, output, members, options, names)
    elif names is not None:
        raise BatchInputError(
            "names: served names choose generators by body.model, so they are taken with an "
            "OpenAI batch file only",
            source=source,
        )
    elif output_format == "openai":
        raise BatchInputError(
            "output_format='openai' needs an OpenAI batch file as input (lines with "
            "custom_id, method, url and body)",
            source=source,
        )
    settings = _Settings(
        progress_every_s=progress_every_s if progress else -1,
        rows_per_part=rows_per_part,
        seconds_per_part=seconds_per_part,
        retry_failed=retry_failed,
        num_cpus=num_cpus,
        gpus_in_all=0,
        label=progress_label,
        stop=stop,
    )
    try:
        return _run_source(source, output, members, settings, address, verbose, options)
    finally:
        if output_format == "openai" and openai_files.is_prepared(output):
            from rig_ray.batch.openai_export import export_into_folder

            export_into_folder(output)


def _run_source(
    source: str,
    output: str,
    members: list[Generator],
    settings: _Settings,
    address: str | None,
    verbose: bool,
    options: dict[str, t.Any],
) -> BatchSummary:
    structured = StructuredSpec.build(
        options.get("parse_as"),
        options.get("json_schema"),
        options.get("max_parse_retries", DEFAULT_MAX_PARSE_RETRIES),
    )
    with_json_schema(members, options.get("params"), structured)  # refused before Ray starts
    gpus_per_actor(members, options.get("num_gpus"))  # one the engines refuse fails here
    folder = OutputFolder(output)  # and so does an output URI that cannot be opened
    if not verbose:
        quiet_ray_logs()
    size_engines_ahead(members, options.get("num_gpus"))
    join(address)
    replicas = options.get("replicas", 1)  # a bad value is refused by `generate`, naming it
    replicas = replicas if isinstance(replicas, int) and replicas > 0 else 1
    gpus = gpus_in_all(members, options.get("num_gpus"), replicas)  # unset: by the cluster's
    size_engines_ahead(members, options.get("num_gpus"))  # those on GPUs, now that Ray runs
    options["data_cpus"] = data_task_cpus(options.get("data_cpus"))
    progress = settings.progress_every_s >= 0
    with job_console(members, progress=progress, verbose=verbose):
        dataset = _read(source, options)
        spec = _spec(_columns(dataset, source, options), options)
        manifest = _manifest(members, spec, structured, options)
        with FolderLock(folder.filesystem, folder.path, output) as lock:
            return _run(
                folder,
                lock,
                dataset,
                spec,
                manifest,
                settings._replace(gpus_in_all=gpus),
                options,
            )


def pending(source: str, output: str, *, retry_failed: bool = False, **options: t.Any) -> int:
    """The generations a `run` with these arguments would make, loading no model.

    The output folder's manifest is checked as `run` checks it: other settings are refused
    with the same `BatchInputError`. Runs on the Ray already initialised (or starts one).
    """
    input_files(source)
    folder = OutputFolder(output)
    join(options.get("address"))
    options["data_cpus"] = data_task_cpus(options.get("data_cpus"))
    dataset = _read(source, options)
    spec, manifest = _checked_settings(folder, _columns(dataset, source, options), options)
    plan = _first_pass(dataset, spec, manifest, folder.scan(), retry_failed, folder.location)
    return plan.pending


def check_settings(columns: t.Sequence[str], output: str, **options: t.Any) -> None:
    """Refuse, with `run`'s `BatchInputError`, settings that differ from `output`'s manifest
    or name columns an input of `columns` lacks. Reads no rows and needs no Ray."""
    _checked_settings(OutputFolder(output), tuple(columns), options)


def _checked_settings(
    folder: OutputFolder, columns: tuple[str, ...], options: dict[str, t.Any]
) -> tuple[PromptSpec, Manifest]:
    members = generator_members(options.get("generator"), options.get("generators"))
    structured = StructuredSpec.build(
        options.get("parse_as"),
        options.get("json_schema"),
        options.get("max_parse_retries", DEFAULT_MAX_PARSE_RETRIES),
    )
    spec = _spec(columns, options)
    manifest = _manifest(members, spec, structured, options)
    check_manifest(folder.filesystem, folder.path, folder.location, manifest, write=False)
    return spec, manifest


class _Settings(t.NamedTuple):
    progress_every_s: float
    rows_per_part: int
    seconds_per_part: float
    retry_failed: bool
    num_cpus: float | None
    gpus_in_all: float
    label: str = "rig-ray batch"
    stop: threading.Event | None = None


def _read(source: str, options: dict[str, t.Any]) -> ray.data.Dataset:
    """The input's rows as `run` and `pending` read them (its id column, its data tasks' CPUs)."""
    return read_prompts(
        source, id_column=options.get("id_column", "id"), data_cpus=options.get("data_cpus")
    )


def _columns(dataset: ray.data.Dataset, source: str, options: dict[str, t.Any]) -> tuple[str, ...]:
    wanted = named_columns(options)
    try:  # read by this process: no Ray Data task, so no log lines of its own to keep off
        return input_columns(
            dataset, source, id_column=options.get("id_column", "id"), wanted=wanted
        )
    except Exception as error:  # the input itself could not be read
        raise BatchInputError(
            f"cannot read {source!r}: {cause_line(error)}", source=source
        ) from error


def named_columns(options: t.Mapping[str, t.Any]) -> list[str]:
    """The input columns that `run`'s `options` name: template fields, the messages, params
    and text columns."""
    return _unresolved_spec(options).named_columns()


def _spec(columns: tuple[str, ...], options: dict[str, t.Any]) -> PromptSpec:
    return _unresolved_spec(options).resolve(columns)


def _unresolved_spec(options: t.Mapping[str, t.Any]) -> PromptSpec:
    """The prompt settings of `options` (refused, naming the one at fault, before Ray runs)."""
    return PromptSpec.build(
        template=options.get("template"),
        system=options.get("system"),
        messages_column=options.get("messages_column"),
        id_column=options.get("id_column", "id"),
        params_column=options.get("params_column"),
        text_column=options.get("text_column"),
    )


def _manifest(
    members: list[Generator],
    spec: PromptSpec,
    structured: StructuredSpec | None,
    options: dict[str, t.Any],
) -> Manifest:
    params = job_params(options.get("params")) or GenerateParams()  # a dict too (`pending`)
    return Manifest(
        generators=[pinned_identifier(redact(describe(member))) for member in members],
        num_generators=len(members),
        names=options.get("routes"),
        template=spec.template,
        system=spec.system,
        messages_column=spec.messages_column,
        params=pinned_params(redact(params.model_dump(mode="json", exclude_none=True))),
        seed=options.get("seed"),
        num_generations=int(options.get("num_generations", 1)),
        id_column=spec.id_column,
        params_column=spec.params_column,
        generations_column=options.get("generations_column"),
        structured=None
        if structured is None
        else {"parse_as": structured.model_key, "json_schema": structured.json_schema},
        seeds=options.get("seeds", "row"),
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
    label, every_s = f"{settings.label}: reading the input", settings.progress_every_s
    reading = Progress(None, every_s=every_s, label=label, tokens=False)
    with reading.ticking():  # a line every `every_s` while a large input is read
        read = functools.partial(reading.add, failed=0, output_tokens=0)
        plan = _first_pass(
            dataset, spec, manifest, scan, settings.retry_failed, folder.location, read
        )
    retried = scan.failed_count() if settings.retry_failed else 0
    skipped = plan.wanted - plan.pending
    meter = Progress(plan.pending, every_s=settings.progress_every_s, label=settings.label)
    writer = folder.writer(
        rows_per_part=settings.rows_per_part,
        seconds_per_part=settings.seconds_per_part,
        before_part=BeforePart(folder, lock, manifest),
    )
    counts = Counts(earlier_failed=scan.failed_count() - retried)
    if plan.dataset is not None:  # else all is done already: no model is loaded at all
        actors = manifest.num_generators * int(options.get("replicas", 1))
        num_cpus, waiting = fit_cpus(settings.num_cpus, settings.gpus_in_all, actors)
        meter.note = waiting
        with BatchGroups.scope():  # the actors' GPU groups go when the job is done
            generations = generate(plan.dataset, num_cpus=num_cpus, **options)
            write_generations(generations, writer, meter, counts, folder.location, settings.stop)
        if retried:
            folder.compact()  # the retried generations' old failed rows go
    return batch_summary(folder.location, plan.rows_in, skipped, meter, counts, writer.written)


def _first_pass(
    dataset: ray.data.Dataset,
    spec: PromptSpec,
    manifest: Manifest,
    scan: Scan,
    retry_failed: bool,
    location: str,
    read: t.Callable[[int], None] | None = None,
) -> Plan:
    """`plan_rows` over the input (`read` told the rows of each block); an error from a read
    task (a bad row anywhere in the input) becomes one `BatchInputError` line, with none of
    Ray Data's own log lines. A column that `spec` names and no row holds is refused as
    `PromptSpec.resolve` refuses it (a JSON file's key may first appear past the rows read
    before the job ran)."""
    try:
        with errors_told_once():
            plan = plan_rows(
                dataset,
                spec,
                num_generations=manifest.num_generations,
                finished=scan.finished(retry_failed=retry_failed),
                generations_column=manifest.generations_column,
                read=read,
            )
    except Exception as error:
        if isinstance(error, RigRayError) and not is_task_error(error):
            raise
        raise BatchInputError(
            f"cannot read the input: {cause_line(error)}", source=location
        ) from error
    if plan.rows_in:  # the columns `input_columns` could not confirm from the first rows
        spec.resolve(plan.columns)
    return plan
