"""Stream mode: every stage's engines loaded at once, the stages running side by side.

The first stage with work runs one `batch.run`; a stage that feeds another writes a part
for each batch of rows that comes back from its engines, at once (`STREAM_SECONDS_PER_PART`).
Each later stage runs in a thread of its own: whenever the stage before has written new
parts (looked for every `POLL_S`), their rows are added to its input (only the new parts are
read, see `pipeline_inputs`) and it runs `batch.run` again over the rows just added (the
first and the last round run over the whole input, resuming past what earlier rounds or
runs made), until the stage before has finished and that last round has taken everything.
Parts that arrive during a round wait for the next one. So a round costs what its new rows
cost, not what the whole input costs. Its engines stay loaded across rounds (only Ray
Data's thin forwarding actors start again), and are unloaded as soon as the stage is done.

A stage that fails stops the others: each ends after the batch of generations it is
writing (`batch.run`'s `stop`), keeping what it wrote, and the pipeline raises that stage's
error; a stage waiting for parts leaves its loop.

So a row reaches the next stage part by part, not row by row through one Ray Data dataset:
its wait is the rest of its batch in the stage before (then it is on disk at once), the
round of the next stage that is running when it arrives, and that round's start (reading
its input, starting Ray Data).

That leaves a stage folder with many small parts (one per batch, or per round for the last
stage). When every stage is done (and so none reads another's parts any more), each stage's
runs of small parts are merged into parts of up to its `rows_per_part` rows, holding its
folder's lock (`merge_parts`, `OutputFolder.merge`), and the next stage's input is made
again from the merged parts. Stages complete already from an earlier run are merged too (a
run that stopped before its end left them small). A run that raises merges nothing.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import typing as t

from rig_ray.batch.lock import FolderLock
from rig_ray.batch.output import Merged, OutputFolder
from rig_ray.batch.pipeline_engines import StageEngines, refuse_what_cannot_load_at_once
from rig_ray.batch.pipeline_summary import StageSummary
from rig_ray.errors import BatchInputError

if t.TYPE_CHECKING:
    from rig_ray.batch.pipeline_run import _Job

POLL_S = 0.2
"""How often a later stage looks for new parts of the stage before, between rounds."""


class Stream:
    def __init__(self, job: _Job) -> None:
        self.job = job
        count = len(job.stages)
        self.summaries = [job.summary(index) for index in range(count)]
        self.done = [threading.Event() for _ in range(count)]
        self.stop = threading.Event()
        self.first = 0

    def run(self) -> list[StageSummary]:
        job = self.job
        first = self.first = self._first_with_work()
        for index in range(first):  # complete already: nothing loads
            self.done[index].set()
            self.summaries[index].note = "complete already"
        working = list(range(first, len(job.stages)))
        sharing = sum(len(job.stages[i].members) * job.stages[i].replicas for i in working)
        engines = {index: job.engines(index, sharing) for index in working}
        started = time.monotonic()
        try:
            self._load(engines)
            with concurrent.futures.ThreadPoolExecutor(len(working) or 1) as pool:
                futures = [
                    pool.submit(self._stage, index, engines[index], started) for index in working
                ]
                for future in concurrent.futures.as_completed(futures):
                    if future.exception() is not None:
                        self.stop.set()
                for future in futures:
                    future.result()
        finally:
            for index, stage_engines in engines.items():
                stage_engines.unload()  # already done for stages that finished
                self.summaries[index].engines = stage_engines.times
        self._merge()
        return self.summaries

    def _merge(self) -> None:
        """Every stage is complete and none reads another's parts any more: merge each
        stage's small parts into parts of up to its `rows_per_part` rows, then remake the
        next stage's input from the merged parts (the same rows and ids, in fewer files, so
        a later run finds it up to date)."""
        job = self.job
        for index, stage in enumerate(job.stages):
            summary = self.summaries[index]
            merged = merge_parts(job.layout.stage(stage.name), stage.rows_per_part)
            if isinstance(merged, str):  # another run holds the folder: left as it is
                note = f"its parts were not merged: {merged}"
                summary.note = f"{summary.note}; {note}" if summary.note else note
                continue
            summary.merged, summary.merged_into = merged
            if merged.parts and index + 1 < len(job.stages):
                job.read(index + 1)

    def _first_with_work(self) -> int:
        """The first stage with generations left to make (every stage after it has work too,
        as its input may grow); len(stages) when all are complete."""
        job = self.job
        for index in range(len(job.stages)):
            read = job.read(index)
            if read is None or job.pending(index, read):
                return index
        return len(job.stages)

    def _load(self, engines: dict[int, StageEngines]) -> None:
        """Load every stage's engines at once."""
        if not engines:
            return
        refuse_what_cannot_load_at_once(list(engines.values()))
        for stage_engines in engines.values():  # one thread: configs are pickled one by one
            stage_engines.start()
        with concurrent.futures.ThreadPoolExecutor(len(engines)) as pool:
            for future in [pool.submit(e.load) for e in engines.values()]:
                future.result()
        for index in engines:
            self.summaries[index].loaded = True

    def _stage(self, index: int, engines: StageEngines, started: float) -> None:
        job = self.job
        summary = self.summaries[index]
        feeds = index + 1 < len(job.stages)
        try:
            if index == self.first:  # what it reads is complete already
                self._round(index, engines, feeds)
            else:
                self._follow(index, engines, feeds)
        finally:
            self.done[index].set()
            engines.unload()
            summary.engines = engines.times
            summary.wall_s = time.monotonic() - started
            job.say(summary.line())

    def _follow(self, index: int, engines: StageEngines, feeds: bool) -> None:
        """Rounds over the parts of the stage before, as they come, until it is done."""
        previous = OutputFolder(self.job.layout.stage(self.job.stages[index - 1].name))
        seen: list[str] | None = None
        while not self.stop.is_set():
            finished = self.done[index - 1].is_set()  # before looking: a later part comes next
            parts = previous.parts()
            if parts != seen or finished:
                whole = seen is None or finished  # the first and the last round read it all
                seen = parts
                self._round(index, engines, feeds, whole=whole)
            if finished:
                return
            self.done[index - 1].wait(POLL_S)

    def _round(self, index: int, engines: StageEngines, feeds: bool, whole: bool = True) -> None:
        """A `batch.run` over the stage's input: all of it, or only the rows just added."""
        read = self.job.read(index)
        if read is None:
            return
        if not whole:
            fresh = self.job.fresh[index]
            if fresh is None:  # no new rows (a part with none for this stage)
                return
            read = read._replace(source=fresh)
        self.summaries[index].add(self.job.run_once(index, read, engines, feeds, self.stop))


def merge_parts(location: str, rows_per_part: int) -> Merged | str:
    """Merge the small parts of a complete stage's folder (`OutputFolder.merge`), holding
    the folder's lock as `batch.run` does; where the lock cannot be taken (another run holds
    it), nothing is merged and the reason is returned."""
    folder = OutputFolder(location)
    if len(folder.parts()) < 2:
        return Merged(0, 0)
    lock = FolderLock(folder.filesystem, folder.path, location)
    try:
        lock.acquire()
    except BatchInputError as busy:
        return str(busy)
    try:
        return folder.merge(rows_per_part=rows_per_part, before_part=lock.check)
    finally:
        lock.release()
