"""The run manifest: what makes a row of an output folder, so a rerun cannot mix settings.

The first run into a folder writes `_rig_ray_manifest.json` (atomically); every later run
compares its own settings with it before any model loads and refuses to start when any differ.
Raising `num_generations` is the one change allowed (resume makes the new generations).

It is written with the first part a run writes (a run that fails before it makes anything
leaves none), and it pins only what changes a row's output: generator identifiers without
their `OPERATIONAL_KEYS`, the job's params without `timeout`, template, system, columns, seed,
structured output, and the served names that route an OpenAI batch file's lines. How a run
is spread out (replicas, batch size, CPUs, GPUs, connections, delays, timeouts) may differ
from run to run.
"""

from __future__ import annotations

import json
import os
import typing as t
import uuid

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, ValidationError

from rig_ray.batch.schema import SCHEMA_VERSION
from rig_ray.errors import BatchInputError

MANIFEST_NAME = "_rig_ray_manifest.json"

OPERATIONAL_KEYS = frozenset(
    {
        "api_key",
        "max_connections",
        "min_delay_between_requests",
        "gpu_memory_utilization",
        "enforce_eager",
        "tensor_parallel_size",
        "device",
        "device_map",
        "timeout",
    }
)
"""Identifier keys and params that change how a generation is made, not what it is."""


def pinned_identifier(identifier: str) -> str:
    """`identifier` without its `OPERATIONAL_KEYS` pairs (as the manifest pins it)."""
    from rig_ray.errors import InvalidGeneratorError
    from rig_ray.generator.identifier import _split_outside_quotes, split_identifier

    try:
        split = split_identifier(identifier)
        head = _split_outside_quotes(identifier.strip(), ",", identifier)[0]
    except InvalidGeneratorError:  # a description, not an identifier: kept whole
        return identifier
    kept = [f"{key}={value}" for key, value in split.pairs if key not in OPERATIONAL_KEYS]
    return ",".join([head, *kept])


def pinned_params(params: dict[str, t.Any]) -> dict[str, t.Any]:
    """The job's params without the ones that do not change an output (`timeout`)."""
    return {key: value for key, value in params.items() if key not in OPERATIONAL_KEYS}


_LABELS = {
    "schema_version": "rig_ray's output schema version",
    "generators": "generators",
    "num_generators": "number of generators",
    "names": "served names (body.model of an OpenAI batch file)",
    "template": "template",
    "system": "system message",
    "messages_column": "messages column",
    "params": "params",
    "seed": "seed",
    "num_generations": "num_generations (lower)",
    "id_column": "id column",
    "params_column": "params column",
    "structured": "structured output (parse_as / json_schema)",
    "seeds": "seeds (per row, or per request as the endpoint)",
}


class Manifest(BaseModel):
    """The settings that decide what a row of the output is. Identifiers and params hold no
    secret (they went through `rig_ray.redaction.redact`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    generators: list[str]
    num_generators: int
    names: list[str] | None = None
    """The generators' served names, where a line's `body.model` chooses among them."""
    template: str | None
    system: str | None
    messages_column: str | None
    params: dict[str, t.Any]
    seed: int | None
    num_generations: int
    id_column: str
    params_column: str | None = None
    generations_column: str | None = None
    """The column with each row's own number of generations, where rows ask for their own."""
    structured: dict[str, t.Any] | None = None
    """`parse_as` (as module:Class) and `json_schema`, when the job reads them out of replies."""
    seeds: str = "row"
    """How seeded samples are seeded (`generate`'s `seeds`)."""

    def differences(self, earlier: Manifest) -> list[str]:
        """The fields in which this run's settings differ from the `earlier` run's; a higher
        `num_generations` is no difference."""
        differ = []
        for name in type(self).model_fields:
            mine, theirs = getattr(self, name), getattr(earlier, name)
            if name == "num_generations":
                if mine < theirs:
                    differ.append(name)
            elif mine != theirs:
                differ.append(name)
        return differ


def check_manifest(
    filesystem: pafs.FileSystem,
    folder: str,
    location: str,
    manifest: Manifest,
    *,
    write: bool = True,
) -> None:
    """Refuse `manifest` if the folder's differs; else (with `write`) record it there, when it
    is the first or raises `num_generations`.

    Raises a one-line `BatchInputError` naming the fields that differ.
    """
    earlier = read_manifest(filesystem, folder, location)
    if earlier is not None:
        differ = manifest.differences(earlier)
        if differ:
            names = ", ".join(_LABELS.get(name, name) for name in differ)
            verb = "differs" if len(differ) == 1 else "differ"
            raise BatchInputError(
                f"{names} {verb} from the run that made the output folder {location!r} "
                f"(see {MANIFEST_NAME} there); give a new output folder for new settings",
                source=location,
            )
        if manifest == earlier:
            return
    if write:
        write_manifest(filesystem, folder, manifest)


def read_manifest(filesystem: pafs.FileSystem, folder: str, location: str) -> Manifest | None:
    """The folder's manifest, or None when it has none yet."""
    path = f"{folder}/{MANIFEST_NAME}"
    try:
        with filesystem.open_input_stream(path) as stream:
            raw = stream.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        raise BatchInputError(f"cannot read {path!r}: {error}", source=location) from error
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as error:
        raise BatchInputError(
            f"{MANIFEST_NAME} in {location!r} is not a rig_ray manifest "
            f"({error.errors()[0]['msg']}); move it away only if the folder holds one run",
            source=location,
        ) from None


def write_manifest(filesystem: pafs.FileSystem, folder: str, manifest: Manifest) -> None:
    """Write the manifest whole or not at all: a new temporary file (never through a link),
    synced, then renamed; an object store makes an upload visible only once it is complete."""
    from rig_ray.batch.output import OBJECT_STORES, create_new, sync_folder

    data = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True).encode()
    final = f"{folder}/{MANIFEST_NAME}"
    if filesystem.type_name in OBJECT_STORES:
        with filesystem.open_output_stream(final) as out:
            out.write(data)
        return
    temporary = f"{folder}/.tmp-{uuid.uuid4().hex[:12]}-{MANIFEST_NAME}"
    if isinstance(filesystem, pafs.LocalFileSystem):
        with create_new(temporary) as local:
            local.write(data)
            local.flush()
            os.fsync(local.fileno())
        os.replace(temporary, final)
        sync_folder(folder)
    else:
        with filesystem.open_output_stream(temporary) as out:
            out.write(data)
        filesystem.move(temporary, final)
