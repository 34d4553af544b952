"""An OpenAI batch file as a `rig_ray.batch.run` job: its options, and which generator each
line goes to.

Each generator has a served name, as in `rig-ray serve`: its `names` entry (`--name`), else
the last part of its model path. With several generators, a line's `body.model` names the
generator that runs it (all of its `n` generations), and a line naming none of them is an
error line for its `custom_id` (`model_not_found`, as the endpoint answers). With one
generator, any model name is accepted, and recorded in the output as the line asked it.
"""

from __future__ import annotations

import typing as t

from rig_ray.batch import openai_files
from rig_ray.errors import BatchInputError

if t.TYPE_CHECKING:
    from rig_ray.generator.base import Generator

ROUTE_COLUMN = "request_model"
"""The prepared column whose value (the line's `body.model`) picks its generator."""


def served_names(members: t.Sequence[Generator], names: t.Sequence[str] | None) -> list[str]:
    """Each generator's served name: `names` (one per generator, in order), else the last part
    of its model path. Two generators under one name are refused."""
    from rig_ray.serve.served_model import short_name

    if names is None:
        chosen = [short_name(member) for member in members]
    else:
        chosen = [names] if isinstance(names, str) else list(names)
        if len(chosen) != len(members):
            raise BatchInputError(
                f"got {len(chosen)} names for {len(members)} generators; give one each (--name)"
            )
        if not all(isinstance(name, str) and name for name in chosen):
            raise BatchInputError("names: each served name must be a non-empty string")
    seen: set[str] = set()
    for name in chosen:
        if name in seen:
            raise BatchInputError(
                f"two generators would be served as {name!r}; give each its own name (--name)"
            )
        seen.add(name)
    return chosen


def job_options(
    source: str,
    output: str,
    members: t.Sequence[Generator],
    options: dict[str, t.Any],
    names: t.Sequence[str] | None = None,
) -> tuple[str, dict[str, t.Any]]:
    """Prepare the batch file `source` in `output`: the prepared file to read instead, and the
    job's options with its columns, generations and routes. Options that choose prompts, ids
    or a number of generations are refused: the file says them."""
    from rig_ray.serve.served_model import takes_vllm_fields

    for name in ("template", "messages_column", "params_column", "text_column"):
        if options.get(name) is not None:
            raise BatchInputError(
                f"{name}: not taken with an OpenAI batch file (its bodies say it)"
            )
    if options.get("id_column", "id") != "id":
        raise BatchInputError(
            "id_column: not taken with an OpenAI batch file (custom_id is the id)"
        )
    if int(options.get("num_generations", 1)) != 1:
        raise BatchInputError(
            "num_generations: not taken with an OpenAI batch file (each body's n says it)"
        )
    served = served_names(members, names)
    routes: dict[str, t.Any] = {}
    models: bool | dict[str, bool]
    if len(members) > 1:
        models = {name: takes_vllm_fields(m) for name, m in zip(served, members, strict=True)}
        routes = {"route_column": ROUTE_COLUMN, "routes": served}
    else:
        models = bool(members) and takes_vllm_fields(members[0])
    prepared = openai_files.prepare(source, output, vllm_fields=models)
    return openai_files.requests_location(output), {
        **options,
        **routes,
        **openai_files.prepared_options(prepared.num_generations),
    }
