"""What a pipeline did: a summary per stage, and the whole."""

from __future__ import annotations

import typing as t

from pydantic import BaseModel, ConfigDict, Field

from rig_ray.batch.pipeline_engines import EngineTimes
from rig_ray.batch.run_writing import BatchSummary, counts_text
from rig_ray.redaction import redact

GpuSharing = t.Literal["auto", "stream", "swap"]


class StageSummary(BaseModel):
    """What one stage did: its `batch.run` rounds added up, and its engines' times."""

    model_config = ConfigDict(extra="forbid")

    name: str
    output: str
    rows_in: int = 0
    generations_written: int = 0
    skipped: int = 0
    failed: int = 0
    failed_in_output: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    wall_s: float = 0.0
    rounds: int = 0
    """`batch.run` calls (stream mode runs a later stage again as parts arrive)."""
    loaded: bool = False
    """Whether its engines were loaded (False: nothing was left to do)."""
    engines: EngineTimes = Field(default_factory=EngineTimes)
    merged: int = 0
    """Small parts merged once the stage was complete (stream mode) ..."""
    merged_into: int = 0
    """... into this many parts."""
    note: str | None = None

    def add(self, run: BatchSummary) -> None:
        if not self.rounds:
            self.skipped = run.skipped
        self.rounds += 1
        self.rows_in = run.rows_in
        self.generations_written += run.generations_written
        self.failed += run.failed
        self.failed_in_output = run.failed_in_output
        self.input_tokens += run.input_tokens
        self.output_tokens += run.output_tokens

    def line(self) -> str:
        """The summary in one line."""
        line = f"stage {self.name}: {counts_text(self)}"
        if self.loaded:
            line += (
                f"; engines loaded in {self.engines.load_s:.1f}s, unloaded in "
                f"{self.engines.unload_s:.1f}s"
            )
        else:
            line += "; no model loaded"
        if self.merged:
            line += f"; merged {self.merged:,} parts into {self.merged_into:,}"
        if self.note:
            line += f" ({self.note})"
        return redact(f"{line} -> {self.output}")


class PipelineSummary(BaseModel):
    """What a pipeline run did."""

    model_config = ConfigDict(extra="forbid")

    output: str
    gpu_sharing: t.Literal["stream", "swap"]
    """The mode the stages ran in."""
    reason: str
    """Why that mode (with `gpu_sharing="auto"`: what the cluster had room for)."""
    stages: list[StageSummary]
    wall_s: float

    @property
    def failed(self) -> int:
        return sum(stage.failed for stage in self.stages)

    def stage(self, name: str) -> StageSummary:
        return next(stage for stage in self.stages if stage.name == name)

    def lines(self) -> list[str]:
        """One line per stage, then the whole."""
        return [
            *(stage.line() for stage in self.stages),
            redact(
                f"rig-ray pipeline: {len(self.stages)} stage(s) in {self.wall_s:.1f}s "
                f"({self.gpu_sharing}: {self.reason}) -> {self.output}"
            ),
        ]
