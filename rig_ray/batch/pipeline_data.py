"""A pipeline's folder: each stage's input made from the stage before, and the final table.

`<output>/<stage>/` is the stage's `batch.run` folder. `<output>/_inputs/<stage>/` is what a
later stage reads (one Parquet file per part of the stage before, made part by part, see
`pipeline_inputs`): one row per generation of the stage before, with
- `id` = `<parent id>/<generation_index>` and `parent_id` = the parent's id;
- the pipeline input's columns (as the first stage wrote them through);
- the previous stage's `text` and its parsed (typed) columns;
- every earlier stage's own columns under `<stage>_` (`answer_text`, `judge_score`, ...).
Rows whose parent failed or did not parse (an `error`) are left out unless the stage keeps
them (`on_error="keep"`). `<output>/_rig_ray_pipeline.json` records the stages in order.
"""

from __future__ import annotations

import json
import typing as t

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rig_ray.batch.output import OutputFolder, read_output
from rig_ray.batch.pipeline_inputs import (
    PARENT_COLUMN,
    Derivation,
    input_columns,
    input_summary,
    own_columns,
    update_input,
)
from rig_ray.batch.schema import OUTPUT_SCHEMA, passthrough_names
from rig_ray.batch.source import input_files, open_filesystem
from rig_ray.errors import PipelineError
from rig_ray.redaction import redact

RECORD_NAME = "_rig_ray_pipeline.json"
INPUTS_FOLDER = "_inputs"


class Layout:
    """Where a pipeline keeps its stages, their inputs and its record."""

    def __init__(self, output: str) -> None:
        self.location = output.rstrip("/")
        self.filesystem, self.path = open_filesystem(self.location)

    def stage(self, name: str) -> str:
        """The stage's `batch.run` folder."""
        return f"{self.location}/{name}"

    def stage_input(self, name: str) -> str:
        """The folder of the input made for the stage from the stage before."""
        return f"{self.location}/{INPUTS_FOLDER}/{name}"

    def read_record(self) -> dict[str, t.Any] | None:
        try:
            with self.filesystem.open_input_stream(f"{self.path}/{RECORD_NAME}") as stream:
                return t.cast(dict[str, t.Any], json.loads(stream.read()))
        except FileNotFoundError:
            return None
        except OSError:
            if self._missing(f"{self.path}/{RECORD_NAME}"):
                return None
            raise

    def check_record(self, names: list[str]) -> None:
        """Refuse stages that reorder, rename or replace the stages of an earlier run (stages
        added at the end, or left off the end, are fine)."""
        record = self.read_record()
        if record is None:
            return
        earlier = list(record.get("stages", []))
        for index, (then, now) in enumerate(zip(earlier, names, strict=False)):
            if then != now:
                raise PipelineError(
                    f"stage {index + 1} is {now!r} but the run that made {self.location!r} had "
                    f"{then!r} there (stages: {', '.join(earlier)}); stages may only be added "
                    "at the end: give a new output folder for other stages",
                    stage=now,
                    source=self.location,
                )

    def write_record(self, names: list[str], columns: list[str], id_column: str) -> None:
        """Record the stages in order. Stages of an earlier run that this one leaves off the
        end stay in the record (their folders are still there, and `read_pipeline` joins
        them); `check_record` has refused any other difference already."""
        record = self.read_record() or {}
        earlier = list(record.get("stages", []))
        kept = earlier[len(names) :] if earlier[: len(names)] == names else []
        record = {"stages": names + kept, "input_columns": columns, "id_column": id_column}
        self.filesystem.create_dir(self.path, recursive=True)
        _write_bytes(self.filesystem, f"{self.path}/{RECORD_NAME}", json.dumps(record).encode())

    def _missing(self, path: str) -> bool:
        return bool(self.filesystem.get_file_info(path).type == pafs.FileType.NotFound)


class StageInput(t.NamedTuple):
    """What a stage reads: its input's location, columns and id column."""

    source: str
    columns: list[str]
    id_column: str


def derive(
    layout: Layout, stage: str, how: Derivation
) -> tuple[StageInput, int, str | None] | None:
    """Bring `stage`'s input up to date with the output of the stage before (`how`), part by
    part (see `pipeline_inputs`); None when that stage has no output yet. Also returns the
    row count, and the location of the subfolder with the rows this update added (None:
    none)."""
    location = layout.stage_input(stage)
    _, inner = open_filesystem(location)
    made = update_input(OutputFolder(layout.stage(how.previous)), inner, layout.filesystem, how)
    if made is None:
        return None
    fresh = None if made.fresh is None else f"{location}/{made.fresh}"
    return StageInput(location, made.columns, "id"), made.rows, fresh


def planned_input(layout: Layout, stage: str, how: Derivation) -> StageInput | None:
    """What `derive` would make `stage` read now (its columns), writing nothing; None when
    the stage before has no output yet."""
    columns = input_columns(OutputFolder(layout.stage(how.previous)), how)
    return None if columns is None else StageInput(layout.stage_input(stage), columns, "id")


def _write_bytes(filesystem: pafs.FileSystem, path: str, data: bytes) -> None:
    if isinstance(filesystem, pafs.LocalFileSystem):
        folder, name = path.rsplit("/", 1)
        temporary = f"{folder}/.tmp-{name}"
        with filesystem.open_output_stream(temporary) as out:
            out.write(data)
        filesystem.move(temporary, path)
    else:
        with filesystem.open_output_stream(path) as out:
            out.write(data)


def read_pipeline(output: str) -> pa.Table:
    """A pipeline's result: one row per generation of its last stage, with that stage's own
    columns, `parent_id`, the input's columns, and every earlier stage's columns under its
    `<stage>_` prefix. A last stage with no rows (every parent failed or did not parse, or it
    has not run) gives an empty table of the generation columns and what its input carries
    (its parsed columns are known only from its rows)."""
    layout = Layout(output)
    record = layout.read_record()
    if record is None or not record.get("stages"):
        raise PipelineError(
            f"{redact(output)!r} holds no pipeline (no {RECORD_NAME})", source=output
        )
    names: list[str] = record["stages"]
    last = names[-1]
    read = _last_input(layout, last) if len(names) > 1 else None
    kept = [] if read is None else _kept(read.columns, names)
    if not OutputFolder(layout.stage(last)).parts():
        return _empty(layout, read, kept)
    table = read_output(layout.stage(last))
    if read is None:
        return table
    carried = passthrough_names(read.columns, "id")
    result = table.select(own_columns(table.column_names, read))
    for name in kept:
        result = result.append_column(name, table.column(carried[name]))
    return result


def _last_input(layout: Layout, last: str) -> StageInput | None:
    """What the last stage read (None: nothing yet)."""
    path = layout.stage_input(last)
    _, inner = open_filesystem(path)
    if layout.filesystem.get_file_info(inner).type == pafs.FileType.NotFound:
        path += ".parquet"  # a folder made before inputs were kept part by part
        if layout.filesystem.get_file_info(path).type == pafs.FileType.NotFound:
            return None
    _, files = input_files(path)
    columns, _ = input_summary(layout.filesystem, files)
    return StageInput(path, columns, "id")


def _kept(columns: list[str], names: list[str]) -> list[str]:
    """The last stage's input columns that the result carries: `parent_id`, the pipeline
    input's, and the earlier stages' prefixed ones (not the stage before's unprefixed copies)."""
    previous = names[-2]
    return [
        name
        for name in columns
        if name != "id"
        and (
            name == PARENT_COLUMN
            or name.startswith(tuple(f"{stage}_" for stage in names[:-1]))
            or not _from_previous(name, previous, columns)
        )
    ]


def _empty(layout: Layout, read: StageInput | None, kept: list[str]) -> pa.Table:
    fields = list(OUTPUT_SCHEMA)
    if read is not None:
        _, files = input_files(read.source)
        schema = pq.read_schema(files[0], filesystem=layout.filesystem) if files else None
        for name in kept:
            kind = schema.field(name).type if schema and name in schema.names else pa.string()
            fields.append(pa.field(name, kind))
    return pa.schema(fields).empty_table()


def _from_previous(name: str, previous: str, columns: list[str]) -> bool:
    """Whether an input column of the last stage is the previous stage's unprefixed copy
    (`text`, its parsed columns): those are in the table under `<previous>_` already."""
    return name == "text" or (f"{previous}_{name}" in columns and name != "id")
