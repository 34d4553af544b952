"""`Stage`: one step of a pipeline, with every option `rig_ray.batch.run` takes."""

from __future__ import annotations

import re
import typing as t

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rig_ray.batch.parsed import DEFAULT_MAX_PARSE_RETRIES
from rig_ray.batch.pipeline import DEFAULT_MAX_RESTARTS
from rig_ray.batch.run import DEFAULT_ROWS_PER_PART, DEFAULT_SECONDS_PER_PART
from rig_ray.generator.base import Generator
from rig_ray.generator.params import GenerateParams
from rig_ray.model import Model

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")

OnError = t.Literal["skip", "keep"]


class Stage(BaseModel):
    """One stage of `run_pipeline`: its generators and the options of its `batch.run`.

    `name` names its folder (`<output>/<name>/`) and the prefix (`<name>_`) under which later
    stages see its columns. `on_error="keep"` passes rows whose parent failed or did not parse
    on to this stage (by default they are skipped). `replicas`, `num_gpus`, `num_cpus` and
    `max_restarts` size the stage's engine actors (`num_gpus` left None: the GPUs the engine
    uses, by `rig_ray.cluster.placement`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str
    generator: Generator | str | None = None
    generators: tuple[Generator | str, ...] | None = None
    template: str | None = None
    system: str | None = None
    messages_column: str | None = None
    params_column: str | None = None
    text_column: str | None = None
    num_generations: int = Field(1, ge=1)
    params: GenerateParams | None = None
    replicas: int = Field(1, ge=1)
    num_gpus: float | None = Field(None, ge=0)
    num_cpus: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    """Unset: `batch.generate`'s default (64)."""
    id_column: str = "id"
    seed: int | None = None
    max_restarts: int = Field(DEFAULT_MAX_RESTARTS, ge=0)
    max_concurrent_batches: int | None = Field(None, ge=1)
    """Unset: `batch.generate`'s default (4, or enough to fill a vLLM engine)."""
    batch_timeout_s: float | None = Field(None, gt=0)
    parse_as: type[Model] | None = None
    max_parse_retries: int = Field(DEFAULT_MAX_PARSE_RETRIES, ge=0)
    json_schema: dict[str, t.Any] | type | None = None
    retry_failed: bool = False
    rows_per_part: int = Field(DEFAULT_ROWS_PER_PART, ge=1)
    """Rows per Parquet part at most; in stream mode also the size its small parts are
    merged into at the end."""
    seconds_per_part: float = Field(DEFAULT_SECONDS_PER_PART, gt=0)
    data_cpus: float | None = Field(None, ge=0)
    """CPUs of each of the stage's Ray Data tasks (None: Ray Data's one)."""
    on_error: OnError = "skip"

    def __init__(self, name: str | None = None, /, **data: t.Any) -> None:
        if name is not None:
            data["name"] = name
        super().__init__(**data)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"stage name {value!r} must start with a letter and hold only letters, digits, "
                "'_' and '-' (it names a folder and a column prefix)"
            )
        return value

    @model_validator(mode="after")
    def _one_kind_of_generator(self) -> Stage:
        if (self.generator is None) == (self.generators is None):
            raise ValueError("give a stage either generator= or generators=, not both or neither")
        if self.generators is not None and not self.generators:
            raise ValueError("generators= is empty; give at least one")
        return self

    @property
    def members(self) -> list[Generator | str]:
        """The stage's generators (configs or identifiers), in order."""
        return [self.generator] if self.generator is not None else list(self.generators or ())

    def run_options(self) -> dict[str, t.Any]:
        """The options of this stage's `batch.run`, less the generators and the resources of
        its actors (the pipeline gives those)."""
        return {
            "template": self.template,
            "system": self.system,
            "messages_column": self.messages_column,
            "params_column": self.params_column,
            "text_column": self.text_column,
            "num_generations": self.num_generations,
            "params": self.params,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "max_concurrent_batches": self.max_concurrent_batches,
            "batch_timeout_s": self.batch_timeout_s,
            "parse_as": self.parse_as,
            "max_parse_retries": self.max_parse_retries,
            "json_schema": self.json_schema,
            "retry_failed": self.retry_failed,
            "rows_per_part": self.rows_per_part,
            "seconds_per_part": self.seconds_per_part,
            "data_cpus": self.data_cpus,
        }
