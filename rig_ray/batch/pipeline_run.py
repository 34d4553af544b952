"""`run_pipeline`: stages of `batch.run`, each into its own folder, sharing the cluster.

Every stage is one `rig_ray.batch.run` (its own manifest, lock and resume) over the rows of
the stage before (see `pipeline_data`). Its engines run in generator actors of the stage's
own (`pipeline_engines`), loaded before the stage and unloaded after it:
- "swap": one stage after another; a stage's engines are unloaded, their actors ended and
  their processes gone before the next stage loads. Two stages' engines are never loaded at
  once.
- "stream": every stage's engines are loaded at once and the stages run side by side; a later
  stage takes the Parquet parts of the stage before as they are written (a part per batch
  of rows; a new `batch.run` round over what has arrived, its engines loaded throughout;
  see `pipeline_stream`). Once every stage is done, each stage's small parts are merged
  into parts of up to its `rows_per_part` rows (`OutputFolder.merge`).
- "auto": stream when the cluster has room for every stage's actors at once, else swap.
A stage with nothing left to do loads no model.
"""

from __future__ import annotations

import sys
import threading
import time
import typing as t

from rig_ray.batch.console import job_console
from rig_ray.batch.pipeline_data import Layout, StageInput, derive, planned_input
from rig_ray.batch.pipeline_engines import StageEngines, refuse_what_cannot_load_at_once
from rig_ray.batch.pipeline_inputs import Derivation
from rig_ray.batch.pipeline_stage import Stage
from rig_ray.batch.pipeline_summary import GpuSharing, PipelineSummary, StageSummary
from rig_ray.batch.placement import join
from rig_ray.batch.run import check_settings, named_columns, pending, run
from rig_ray.batch.run_writing import BatchSummary
from rig_ray.batch.source import input_columns, input_files, read_prompts
from rig_ray.cluster.local_ray import quiet_ray_logs
from rig_ray.errors import BatchInputError, PipelineError
from rig_ray.redaction import redact, redact_logs

PROXY_CPUS = 0.05
"""CPUs of each Ray Data actor of a stage: it only forwards batches to the engine actors."""
STREAM_SECONDS_PER_PART = 0.0
"""In stream mode, a stage that feeds another writes a part for every batch of rows that
comes back from its engines, at once (a part is written only when a batch comes in: any
wait here would keep a batch's rows back until the next batch arrives). These small parts
are merged once every stage is done (see `pipeline_stream`)."""
DATA_CPUS = 2.0
"""CPUs left to Ray Data's read, plan and write tasks (all of a smaller cluster): engine
actors without `num_cpus` share what is left, and take a token 0.01 CPU where nothing is."""
_MODES = ("auto", "stream", "swap")


def run_pipeline(
    source: str,
    output: str,
    *,
    stages: t.Sequence[Stage],
    gpu_sharing: GpuSharing = "auto",
    progress: bool = True,
    progress_every_s: float = 5.0,
    address: str | None = None,
) -> PipelineSummary:
    """Run `stages` one on the output of the other, from `source` into `output/<stage>/`.

    Stage k+1 gets one row per generation of stage k (id `<id>/<generation_index>`, a
    `parent_id` column; parents that failed or did not parse are skipped unless the stage
    sets `on_error="keep"`); its templates see the input's columns, the previous stage's
    `text` and parsed columns, and every earlier stage's under `<stage>_`. Each stage resumes
    on its own; a stage whose settings changed since its folder was made is refused with its
    name before any stage runs. `batch.read_pipeline(output)` reads the result.
    """
    chosen = _checked(stages, gpu_sharing)
    input_files(source)  # a bad path fails before Ray starts
    layout = Layout(output)
    layout.check_record([stage.name for stage in chosen])
    quiet_ray_logs()
    join(address)
    redact_logs()
    with job_console([m for s in chosen for m in s.members], progress=progress):
        job = _Job(layout, chosen, source, progress, progress_every_s)
        return job.run(gpu_sharing)


def _checked(stages: t.Sequence[Stage], gpu_sharing: str) -> list[Stage]:
    if gpu_sharing not in _MODES:
        raise PipelineError(f"gpu_sharing must be one of {', '.join(_MODES)}, not {gpu_sharing!r}")
    chosen = list(stages)
    if not chosen:
        raise PipelineError("a pipeline needs at least one stage")
    for stage in chosen:
        if not isinstance(stage, Stage):
            raise PipelineError(f"stages are rig_ray.batch.Stage, not {type(stage).__name__}")
    seen: set[str] = set()
    for stage in chosen:
        if stage.name in seen:
            raise PipelineError(f"two stages are named {stage.name!r}", stage=stage.name)
        seen.add(stage.name)
    return chosen


def _input_columns(source: str, first: Stage) -> list[str]:
    """The columns of the pipeline's input, as `run` finds them for its first stage."""
    wanted = named_columns(first.run_options())
    try:
        dataset = read_prompts(source, id_column=first.id_column)
        return list(input_columns(dataset, source, id_column=first.id_column, wanted=wanted))
    except Exception as error:
        raise BatchInputError(f"cannot read {source!r}: {error}", source=source) from error


def choose_mode(
    gpu_sharing: str, stages: t.Sequence[Stage]
) -> tuple[t.Literal["stream", "swap"], str]:
    """The mode to run in, and why."""
    if gpu_sharing == "stream":
        return "stream", "asked for (gpu_sharing=stream)"
    if gpu_sharing == "swap":
        return "swap", "asked for (gpu_sharing=swap)"
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    actors = [len(stage.members) * stage.replicas for stage in stages]
    need_gpus = sum(_stage_gpus(stage) * stage.replicas for stage in stages)
    need_cpus = sum((s.num_cpus or 0) * n for s, n in zip(stages, actors, strict=True))
    need_cpus += min(DATA_CPUS, cpus) + PROXY_CPUS * sum(actors)  # Ray Data's own
    have = f"the cluster has {cpus:g} CPUs and {gpus:g} GPUs"
    wants = f"every stage at once needs {need_cpus:g} CPUs and {need_gpus:g} GPUs"
    if need_gpus > gpus + 1e-9 or need_cpus > cpus + 1e-9:
        return "swap", f"auto: {wants}, {have}; the stages take turns"
    return "stream", f"auto: {have}, room for every stage at once ({wants})"


class _Job:
    """A pipeline run: its stages, what each reads, and how they run."""

    def __init__(
        self,
        layout: Layout,
        stages: list[Stage],
        source: str,
        progress: bool,
        every_s: float,
    ) -> None:
        self.layout = layout
        self.stages = stages
        self.source = source
        self.progress = progress
        self.every_s = every_s
        self.reads: list[StageInput | None] = [None] * len(stages)
        self.fresh: list[str | None] = [None] * len(stages)
        self._lock = threading.Lock()

    def run(self, gpu_sharing: str) -> PipelineSummary:
        started = time.monotonic()
        columns = _input_columns(self.source, self.stages[0])
        self.reads[0] = StageInput(self.source, columns, self.stages[0].id_column)
        self.refuse_changed()
        names = [stage.name for stage in self.stages]
        self.layout.write_record(names, columns, self.stages[0].id_column)
        mode, reason = choose_mode(gpu_sharing, self.stages)
        self.say(f"rig-ray pipeline: {mode}: {reason}")
        summaries = self.swap() if mode == "swap" else self.stream()
        return PipelineSummary(
            output=redact(self.layout.location),
            gpu_sharing=mode,
            reason=reason,
            stages=summaries,
            wall_s=time.monotonic() - started,
        )

    def say(self, line: str) -> None:
        if self.progress:
            print(redact(line), file=sys.stderr, flush=True)

    def read(self, index: int) -> StageInput | None:
        """What stage `index` reads now, brought up to date with the stage before's parts
        (None: nothing yet). Only stage `index`'s own thread calls it in stream mode; the
        rows it added are in `fresh[index]`."""
        if index == 0:
            return self.reads[0]
        with self._lock:
            previous_read = self.reads[index - 1]
        if previous_read is None:  # the stage before has not read anything yet
            return None
        made = derive(self.layout, self.stages[index].name, self._how(index, previous_read))
        with self._lock:
            self.reads[index] = made[0] if made else None
            self.fresh[index] = made[2] if made else None
        return self.reads[index]

    def options(self, index: int, read: StageInput) -> dict[str, t.Any]:
        return {**self.stages[index].run_options(), "id_column": read.id_column}

    def pending(self, index: int, read: StageInput) -> int:
        """Generations stage `index` still has to make (refused, naming it, if changed)."""
        stage = self.stages[index]
        with _named(stage.name):
            return pending(
                read.source,
                self.layout.stage(stage.name),
                generators=stage.members,
                **self.options(index, read),
            )

    def refuse_changed(self) -> None:
        """Refuse, before any stage runs and before any stage's input is brought up to date,
        a stage whose settings differ from its folder's (or name a column its input lacks)."""
        read = self.reads[0]
        for index, stage in enumerate(self.stages):
            if read is None:  # the stage before has written nothing yet
                return
            with _named(stage.name):
                check_settings(
                    read.columns,
                    self.layout.stage(stage.name),
                    generators=stage.members,
                    **self.options(index, read),
                )
            if index + 1 < len(self.stages):
                following = self.stages[index + 1].name
                read = planned_input(self.layout, following, self._how(index + 1, read))

    def _how(self, index: int, previous_read: StageInput) -> Derivation:
        """How stage `index`'s rows come from those of the stage before, which read
        `previous_read`."""
        return Derivation(
            self.stages[index - 1].name,
            previous_read,
            tuple(s.name for s in self.stages[: index - 1]),
            self.stages[index].on_error == "keep",
        )

    def run_once(
        self,
        index: int,
        read: StageInput,
        engines: StageEngines | None,
        feeds: bool,
        stop: threading.Event | None = None,
    ) -> BatchSummary:
        stage = self.stages[index]
        options = self.options(index, read)
        if feeds:  # a later stage takes this one's parts as they come
            options["seconds_per_part"] = min(stage.seconds_per_part, STREAM_SECONDS_PER_PART)
        with _named(stage.name):
            return run(
                read.source,
                self.layout.stage(stage.name),
                generators=engines.handles() if engines else stage.members,
                replicas=stage.replicas,
                # the engines' actors hold the GPUs; a complete stage (no engines) loads none,
                # and its members' own need is only checked, not reserved
                num_gpus=0 if engines else None,
                num_cpus=PROXY_CPUS,
                progress=self.progress,
                progress_every_s=self.every_s,
                progress_label=f"rig-ray pipeline [{stage.name}]",
                stop=stop,
                **options,
            )

    def engines(self, index: int, sharing: int) -> StageEngines:
        """The stage's engines, CPUs per actor fitted to a cluster shared by `sharing` actors."""
        stage = self.stages[index]
        return StageEngines(stage, stage.num_cpus or _cpus_per_actor(sharing))

    def summary(self, index: int) -> StageSummary:
        stage = self.stages[index]
        return StageSummary(name=stage.name, output=redact(self.layout.stage(stage.name)))

    # -- swap --------------------------------------------------------------------------------

    def swap(self) -> list[StageSummary]:
        return [self._swap_stage(index) for index in range(len(self.stages))]

    def _swap_stage(self, index: int) -> StageSummary:
        summary = self.summary(index)
        started = time.monotonic()
        read = self.read(index)
        if read is None:
            summary.note = "the stage before wrote nothing"
            return summary
        engines = None
        if self.pending(index, read):
            stage = self.stages[index]
            engines = self.engines(index, stage.replicas * len(stage.members))
        try:
            if engines is not None:
                refuse_what_cannot_load_at_once([engines])
                engines.load()
                summary.loaded = True
            summary.add(self.run_once(index, read, engines, feeds=False))
        finally:
            if engines is not None:
                engines.unload()
                summary.engines = engines.times
        summary.wall_s = time.monotonic() - started
        self.say(summary.line())
        return summary

    # -- stream ------------------------------------------------------------------------------

    def stream(self) -> list[StageSummary]:
        from rig_ray.batch.pipeline_stream import Stream

        return Stream(self).run()


class _named:
    """Re-raise a stage's `BatchInputError` (a refused manifest, a missing column) with the
    stage's name in front."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: t.Any, error: t.Any, trace: t.Any) -> None:
        if isinstance(error, BatchInputError) and not isinstance(error, PipelineError):
            raise PipelineError(f"stage {self.name!r}: {error}", stage=self.name) from error


def _stage_gpus(stage: Stage) -> float:
    """GPUs one replica of each of the stage's generators takes, added up."""
    from rig_ray.cluster.placement import place
    from rig_ray.generator.registry import get_generator

    return sum(
        place(get_generator(m) if isinstance(m, str) else m, num_gpus=stage.num_gpus).total_gpus
        for m in stage.members
    )


def _cpus_per_actor(sharing: int) -> float:
    """CPUs per engine actor when `sharing` engine actors share the cluster: one each where
    there is room, else an equal share of what Ray Data's tasks and actors leave."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 0))
    left = cpus - min(DATA_CPUS, cpus) - PROXY_CPUS * sharing * 2
    return round(max(min(1.0, left / max(sharing, 1)), 0.01), 3)
