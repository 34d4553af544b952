"""A pipeline from a YAML file: `input`, `output`, `stages` (and `gpu_sharing`).

Each stage is a mapping with a `name` and the options of `rig-ray batch`, spelt as on its
command line (`num-generations`) or as in Python (`num_generations`): `generator` (one
identifier or a list), `template`, `system`, `messages-column`, `params-column`,
`num-generations`, `replicas`, `num-gpus`, `num-cpus`, `batch-size`, `id-column`,
`max-concurrent-batches`, `batch-timeout-s`, `retry-failed`, `seed`, `max-tokens`,
`temperature`, `parse-as` (module:Class), `max-parse-retries`, `json-schema` (a file, or the
schema itself), plus `params` (a mapping of generate params), `on-error` (skip / keep),
`max-restarts`, `rows-per-part` and `seconds-per-part`. Any other key is an error naming it.
"""

from __future__ import annotations

import typing as t

from pydantic import BaseModel, ConfigDict, ValidationError

from rig_ray.batch.parsed import import_model, read_schema
from rig_ray.batch.pipeline_stage import Stage
from rig_ray.errors import PipelineError, RigRayError
from rig_ray.generator.params import GenerateParams

TOP_KEYS = ("input", "output", "stages", "gpu_sharing")
STAGE_KEYS = (
    "name",
    "generator",
    "generators",
    "template",
    "system",
    "messages_column",
    "params_column",
    "text_column",
    "num_generations",
    "replicas",
    "num_gpus",
    "num_cpus",
    "batch_size",
    "id_column",
    "max_concurrent_batches",
    "batch_timeout_s",
    "retry_failed",
    "seed",
    "max_tokens",
    "temperature",
    "parse_as",
    "max_parse_retries",
    "json_schema",
    "params",
    "on_error",
    "max_restarts",
    "rows_per_part",
    "seconds_per_part",
    "data_cpus",
)


class PipelineConfig(BaseModel):
    """What `rig-ray pipeline` runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: str
    output: str
    stages: tuple[Stage, ...]
    gpu_sharing: t.Literal["auto", "stream", "swap"] = "auto"


def load_pipeline(path: str) -> PipelineConfig:
    """The pipeline of a YAML file; a `PipelineError` names a bad key or value."""
    import yaml

    try:
        with open(path) as file:
            raw = yaml.safe_load(file)
    except OSError as error:
        raise PipelineError(f"cannot read {path!r}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise PipelineError(f"{path!r} is not valid YAML: {' '.join(str(error).split())}") from None
    return pipeline_from(raw, path)


def pipeline_from(raw: t.Any, where: str = "the pipeline") -> PipelineConfig:
    """The pipeline of a mapping as a YAML file holds it."""
    if not isinstance(raw, dict):
        raise PipelineError(f"{where}: expected a mapping with {', '.join(TOP_KEYS)}")
    top = _keys(raw, TOP_KEYS, where)
    for key in ("input", "output", "stages"):
        if key not in top:
            raise PipelineError(f"{where}: {key!r} is missing", key=key)
    stages = top["stages"]
    if not isinstance(stages, list) or not stages:
        raise PipelineError(f"{where}: 'stages' must be a list of stages", key="stages")
    try:
        return PipelineConfig(
            input=str(top["input"]),
            output=str(top["output"]),
            stages=tuple(_stage(item, index, where) for index, item in enumerate(stages)),
            gpu_sharing=top.get("gpu_sharing", "auto"),
        )
    except ValidationError as error:
        first = error.errors()[0]
        place = ".".join(str(part) for part in first["loc"])
        raise PipelineError(f"{where}: {place}: {first['msg']}") from None


def _keys(raw: dict[str, t.Any], allowed: t.Sequence[str], where: str) -> dict[str, t.Any]:
    """`raw` with keys spelt with '_' ; a key not in `allowed` is an error naming it."""
    out: dict[str, t.Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in allowed:
            shown = ", ".join(k.replace("_", "-") for k in allowed)
            raise PipelineError(f"{where}: unknown key {key!r} (known: {shown})", key=str(key))
        out[name] = value
    return out


def _stage(raw: t.Any, index: int, where: str) -> Stage:
    place = f"{where}: stage {index + 1}"
    if not isinstance(raw, dict):
        raise PipelineError(f"{place}: expected a mapping of options")
    name = raw.get("name")
    if name is not None:
        place = f"{where}: stage {name!r}"
    options = _keys(raw, STAGE_KEYS, place)
    generator = options.pop("generator", None)
    if isinstance(generator, list):
        options["generators"] = tuple(str(item) for item in generator)
    elif generator is not None:
        options["generator"] = str(generator)
    try:
        return _made(options, place)
    except PipelineError:
        raise
    except RigRayError as error:  # a parse-as or json-schema that cannot be read, ...
        raise PipelineError(f"{place}: {error}") from None


def _made(options: dict[str, t.Any], place: str) -> Stage:
    if isinstance(options.get("parse_as"), str):
        options["parse_as"] = import_model(options["parse_as"])
    if isinstance(options.get("json_schema"), str):
        options["json_schema"] = read_schema(options["json_schema"])
    sampling = {k: options.pop(k) for k in ("max_tokens", "temperature") if k in options}
    try:
        if sampling or "params" in options:
            params = options.pop("params", None) or {}
            if not isinstance(params, dict):
                raise PipelineError(
                    f"{place}: params: expected a mapping of generate params, "
                    f"not {type(params).__name__}",
                    key="params",
                )
            options["params"] = GenerateParams.model_validate({**params, **sampling})
        return Stage(**options)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "stage"
        raise PipelineError(f"{place}: {field}: {first['msg']}", key=field) from None
