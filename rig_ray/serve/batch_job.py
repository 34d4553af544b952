"""A `/v1/batches` batch as a rig_ray batch job: `rig_ray.batch.run` in a Ray task.

The job reads the batch's prepared requests (`rig_ray.batch.openai_files.prepare`) and writes
Parquet parts into the batch's job folder, its generator a `serve!` generator
(`rig_ray.generator.serve_`) whose rows go back to the app's ingress and on to the model's
deployment: resume, the manifest, the folder lock and the part writer are the batch job's
own. The task and its Ray Data actors ask for no CPU (they only wait on Serve);
it is owned by the ingress replica that started it, so it ends with that replica. Stopping it
(`ray.cancel`) interrupts the run, which writes what it has made before it ends.
"""

from __future__ import annotations

import logging
import time
import typing as t

from pydantic import BaseModel, ConfigDict, Field

from rig_ray.batch.openai_files import (
    REQUESTS_FILE,
    meta_path,
    prepared_options,
    requests_location,
)
from rig_ray.errors import BatchInputError

logger = logging.getLogger("ray.serve")

ACTOR_CPUS = 0.0
"""CPUs each of a job's Ray Data actors asks for: none, they only wait on Serve handles."""
DATA_CPUS = 0.0
"""CPUs each of a job's Ray Data tasks asks for (reading the prepared file, cutting it into
batches): none, so that a job runs beside replicas that hold every CPU of the cluster."""
ROWS_PER_PART = 64
SECONDS_PER_PART = 2.0
"""How often a job writes a part: what a stop loses at most, and how fresh progress is."""
BUSY_WAIT_S = 60.0
"""How long a job waits for the folder lock of a run that is still stopping."""


class JobSpec(BaseModel):
    """What the job task needs: where the batch is, which model and app its rows go to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_id: str
    job: str
    """The job folder (a path or URI)."""
    model: str
    """The served model name the rows go to."""
    app: str
    deployment: str
    """The app's deployment that serves its routes (and takes the rows)."""
    num_generations: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    """Rows per block of the job: small, so progress and a stop are fine-grained."""
    max_concurrent_batches: int = Field(ge=1)


def job_spec(
    batch_id: str,
    job: str,
    model: str,
    num_generations: int,
    max_in_flight: int,
    *,
    app: str,
    deployment: str,
) -> JobSpec:
    """A job that keeps about twice the replica's batch slots of rows waiting on them."""
    batch_size = max(1, min(16, max_in_flight))
    return JobSpec(
        batch_id=batch_id,
        job=job,
        model=model,
        app=app,
        deployment=deployment,
        num_generations=num_generations,
        batch_size=batch_size,
        max_concurrent_batches=max(2, -(-2 * max_in_flight // batch_size)),
    )


def run_job(spec: JobSpec) -> None:
    """Run (or resume) the batch job; the body of the Ray task."""
    from rig_ray.batch.run import run
    from rig_ray.generator.serve_ import ServeGenerator

    generator = ServeGenerator(
        model=spec.model, app=spec.app, deployment=spec.deployment, batch=spec.batch_id
    )
    deadline = time.monotonic() + BUSY_WAIT_S
    while True:
        try:
            run(
                requests_location(spec.job),
                spec.job,
                generator=generator,
                progress=False,
                rows_per_part=ROWS_PER_PART,
                seconds_per_part=SECONDS_PER_PART,
                num_cpus=ACTOR_CPUS,
                data_cpus=DATA_CPUS,
                batch_size=spec.batch_size,
                max_concurrent_batches=spec.max_concurrent_batches,
                progress_label=f"batch {spec.batch_id}",
                **prepared_options(spec.num_generations),
            )
            return
        except BatchInputError as error:  # a stopped run of this batch still lets go
            if "in use by another run" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def start_job(spec: JobSpec) -> t.Any:
    """The job as a Ray task (its ObjectRef): no CPU, never retried (a rerun resumes)."""
    import ray

    task = ray.remote(num_cpus=0, max_retries=0)(run_job)
    return task.options(**job_placement(spec.job)).remote(spec)


async def wait_for_job(ref: t.Any) -> None:
    """Wait for the job task; a task that was stopped counts as ended."""
    from ray.exceptions import TaskCancelledError

    try:
        await ref
    except TaskCancelledError:
        return


def cancel_job(ref: t.Any) -> None:
    import ray

    try:
        ray.cancel(ref, recursive=True)
    except Exception:  # already finished
        logger.debug("the batch job had ended", exc_info=True)


def job_placement(job: str) -> dict[str, t.Any]:
    """Where the job task runs: a job folder on this node's own disk (no URI scheme) is
    written there, so the task runs on this node; a shared store lets Ray choose."""
    if "://" in job:
        return {}
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=here, soft=False)}


def requested(job: str) -> dict[str, int]:
    """custom_id -> n of the job's prepared requests."""
    import pyarrow.parquet as pq

    filesystem, path = meta_path(job, REQUESTS_FILE)
    table = pq.read_table(path, columns=["id", "n"], filesystem=filesystem)
    return dict(zip(table.column("id").to_pylist(), table.column("n").to_pylist(), strict=True))


def progress(job: str, wanted: t.Mapping[str, int]) -> tuple[int, int]:
    """(completed, failed) lines in the job folder so far: a line counts once all its `n`
    generations are written, as failed if one of them failed."""
    from rig_ray.batch.output import OutputFolder

    scan = OutputFolder(job).scan()
    completed = failed = 0
    ids = list(wanted)
    masks = zip(ids, scan.done.masks(ids), scan.failed.masks(ids), strict=True)
    for row_id, done_mask, failed_mask in masks:
        mask = (1 << wanted[row_id]) - 1
        done, bad = done_mask & mask, failed_mask & mask
        if done | bad == mask:
            if bad:
                failed += 1
            else:
                completed += 1
    return completed, failed


def models_of(job: str) -> list[tuple[int, str]]:
    """(line, body.model) of every valid line of the job's prepared requests."""
    import pyarrow.parquet as pq

    filesystem, path = meta_path(job, REQUESTS_FILE)
    table = pq.read_table(path, columns=["line", "request_model"], filesystem=filesystem)
    lines = table.column("line").to_pylist()
    return list(zip(lines, table.column("request_model").to_pylist(), strict=True))
