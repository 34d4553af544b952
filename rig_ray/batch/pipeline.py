"""`generate`: a lazy Ray dataset of generations from a dataset of prompts."""

from __future__ import annotations

import functools
import typing as t
import warnings

from rig_ray.batch import concurrency
from rig_ray.batch.data_tasks import dataset_columns, remote_args, split_rows
from rig_ray.batch.job_checks import check_sizes
from rig_ray.batch.parsed import DEFAULT_MAX_PARSE_RETRIES, StructuredSpec, with_json_schema
from rig_ray.batch.placement import data_task_cpus, fit_cpus, gpus_in_all
from rig_ray.batch.prepare import INTERNAL_COLUMNS
from rig_ray.batch.prompts import PromptSpec, job_params
from rig_ray.batch.stage import GenerateStage, StageConfig
from rig_ray.cluster.options import config_payload
from rig_ray.cluster.placement import Placement, check_resource, place
from rig_ray.cluster.placement_groups import BatchGroups
from rig_ray.errors import InvalidGeneratorError
from rig_ray.generator.base import Generator
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.registry import get_generator
from rig_ray.generator.rounds import check_count
from rig_ray.model import Model

if t.TYPE_CHECKING:
    import ray.data

DEFAULT_MAX_RESTARTS = 3
"""How often a generator actor whose process died is restarted (and its batch retried)."""


def generate(
    dataset: ray.data.Dataset,
    *,
    generator: Generator | str | None = None,
    generators: t.Sequence[Generator | str] | None = None,
    template: str | None = None,
    system: str | None = None,
    messages_column: str | None = None,
    params_column: str | None = None,
    text_column: str | None = None,
    num_generations: int = 1,
    params: GenerateParams | None = None,
    replicas: int = 1,
    num_gpus: float | None = None,
    num_cpus: float | None = None,
    batch_size: int | None = None,
    id_column: str = "id",
    seed: int | None = None,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    max_concurrent_batches: int | None = None,
    batch_timeout_s: float | None = None,
    parse_as: type[Model] | None = None,
    max_parse_retries: int = DEFAULT_MAX_PARSE_RETRIES,
    json_schema: dict[str, t.Any] | type | None = None,
    route_column: str | None = None,
    routes: t.Sequence[str] | None = None,
    generations_column: str | None = None,
    data_cpus: float | None = None,
    seeds: t.Literal["row", "request"] = "row",
) -> ray.data.Dataset:
    """The generations for every row of `dataset`, as a lazy, streaming Ray dataset.

    Each row becomes a conversation: the user message `template` with `$column` fields filled
    from the row, or the OpenAI-shaped messages in `messages_column`, after an optional
    `system` message. (With neither, a `messages` column is used if there is one, else
    `$prompt`.) `params` (`GenerateParams`, or a dict of its fields) apply to every row,
    with each row's own params from `params_column` (objects such as `{"max_tokens": 64}`)
    laid over them. A row with a value in `text_column`
    gets a text completion of it instead (no chat template). Each generator runs in a pool of
    `replicas` Ray actors that load it once, take `num_gpus` / `num_cpus` each (`num_cpus`
    left unset: one, or less on a local Ray too small for every actor, one CPU kept for Ray
    Data's own tasks; see `rig_ray.batch.placement.fit_cpus`. GPUs follow
    `rig_ray.cluster.placement`: unset, an engine over several GPUs gets them as a placement
    group on one node, and a value that disagrees with the engine is a PlacementError), and
    take `batch_size` rows (64) at a time, up to `max_concurrent_batches` batches at once per
    actor. An engine that batches per call (transformers) gets one call per batch, 4 batches
    at once by default. vLLM's engine gets each chat row as its own request, with about 1.1 x
    its max_num_seqs requests in flight per actor, so a slow row holds only its own slot; left
    unset, `max_concurrent_batches` is sized to keep it full (an explicit setting that cannot
    gets a warning). A batch that runs longer than `batch_timeout_s` fails its rows with a
    timeout error. An actor whose engine died exits, to be restarted with its batches.

    With several `generators`, each row's `num_generations` are split across them by the
    pool's divide/remainder rule, drawn from `seed` and the row id: the same split every run.
    With `generations_column`, each row makes its own number of generations (its value, at
    most `num_generations`; empty: `num_generations`), as an OpenAI batch file's `n` does.
    With `routes` (one name per generator) and `route_column`, each row instead goes whole to
    the generator whose name is its `route_column` value (a row naming none is left out): an
    OpenAI batch file's `body.model` choosing a served model. Ray Data's own tasks here (the
    cut into batches, the routing) ask `data_cpus` each: None, Ray Data's one CPU (half a CPU
    on a cluster of one); 0 for a job beside engines that hold every CPU (see
    `rig_ray.batch.data_tasks`).

    The result has one row per generation: the columns of `rig_ray.batch.OUTPUT_SCHEMA`, then
    the input's columns. A row the generator fails on gets an `error` and no `text`; it never
    stops the job. An actor whose process dies is restarted up to `max_restarts` times, its
    batch retried. Rows without an id get the hash of their conversation and own params
    (`run` also tells identical rows apart, and skips what an earlier run made).

    A seeded sample (a `seed` in the params) is seeded, with `seeds="row"`, from (seed, row
    id, generation index): a row gives the same text alone, in any batch, or resumed. With
    `seeds="request"` (an OpenAI batch file's lines), as the endpoint seeds one request's
    choices: the first takes the seed as given, so a line gives what the same request to the
    endpoint gives.

    Structured outputs: with `parse_as` (a `rig_ray.Model` subclass) every reply is parsed
    and the rows that do not parse are asked again (`max_parse_retries` rounds, one engine
    batch each, as `ChatPipeline.until_parsed_as` does); with `json_schema` (a dict, or a
    pydantic model class) decoding is constrained to the schema and the reply read as JSON.
    Either way each field (top-level property) becomes a typed column after the generation
    columns (see `rig_ray.batch.parsed`).
    """
    members = generator_members(generator, generators)
    count = check_count(num_generations)
    if seeds not in ("row", "request"):
        raise InvalidGeneratorError(f"seeds must be 'row' or 'request', not {seeds!r}")
    check_sizes(replicas, batch_size, max_concurrent_batches, batch_timeout_s)
    check_resource("num_cpus", num_cpus)
    check_resource("data_cpus", data_cpus)
    structured = StructuredSpec.build(parse_as, json_schema, max_parse_retries)
    params = with_json_schema(members, job_params(params), structured)
    columns = tuple(c for c in dataset_columns(dataset) if c not in INTERNAL_COLUMNS)
    spec = PromptSpec.build(
        template=template,
        system=system,
        messages_column=messages_column,
        id_column=id_column,
        params_column=params_column,
        text_column=text_column,
    ).resolve(columns)
    routed = _check_routes(route_column, routes, len(members), columns)
    if generations_column is not None and generations_column not in columns:
        raise InvalidGeneratorError(
            f"generations_column {generations_column!r} is not a column of the input"
        )
    if num_cpus is None:
        gpus = gpus_in_all(members, num_gpus, replicas)
        num_cpus, _ = fit_cpus(None, gpus, replicas * len(members))
    placements = [place(member, num_gpus=num_gpus, num_cpus=num_cpus) for member in members]
    from ray.data import ActorPoolStrategy

    # One block per engine call: results then stream out batch by batch, rather than once a
    # whole input file (one block, however large) has been generated.
    plans = concurrency.plan(members, batch_size, max_concurrent_batches, placements, count)
    data_cpus = data_task_cpus(data_cpus)
    batches = split_rows(dataset, plans[0].batch_size, data_cpus)
    outputs = []
    for index, (member, sizing) in enumerate(zip(members, plans, strict=True)):
        rows = batches
        if routed is not None:
            rows = dataset.map_batches(
                functools.partial(_rows_for, column=routed[0], name=routed[1][index]),
                batch_format="pyarrow",
                batch_size=None,
                **remote_args(data_cpus),
            )
            rows = split_rows(rows, sizing.batch_size, data_cpus)
        config = StageConfig(
            prompts=spec,
            member=0 if routed else index,
            members=1 if routed else len(members),
            num_generations=count,
            seed=seed,
            params=params or GenerateParams(),
            input_columns=columns,
            batch_timeout_s=batch_timeout_s,
            structured=structured,
            generations_column=generations_column,
            row_requests=sizing.row_requests,
            seeds=seeds,
        )
        with warnings.catch_warnings():
            # Ray Data takes actor restart limits only as (deprecated) extra remote args.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            stage = rows.map_batches(
                GenerateStage,
                fn_constructor_kwargs={
                    "payload": config_payload(member),
                    "config": config,
                },
                batch_size=sizing.batch_size,
                batch_format="pyarrow",
                compute=ActorPoolStrategy(
                    size=replicas, max_concurrent_calls_per_actor=sizing.max_concurrent_batches
                ),
                max_restarts=max_restarts,
                max_task_retries=max_restarts,
                **_actor_args(placements[index]),
            )
        outputs.append(stage)
    first, *rest = outputs
    return first.union(*rest) if rest else first


def _check_routes(
    column: str | None, routes: t.Sequence[str] | None, members: int, columns: tuple[str, ...]
) -> tuple[str, list[str]] | None:
    """The route column and names, checked; None when rows are not routed."""
    if column is None and routes is None:
        return None
    if column is None or routes is None:
        raise InvalidGeneratorError("give route_column= and routes= together")
    names = list(routes)
    if len(names) != members or len(set(names)) != members:
        raise InvalidGeneratorError(
            f"routes= needs one distinct name per generator ({members}), got {names!r}"
        )
    if column not in columns:
        raise InvalidGeneratorError(f"route_column {column!r} is not a column of the input")
    return column, names


def _rows_for(batch: t.Any, column: str, name: str) -> t.Any:
    """The rows of a batch whose `column` is `name`."""
    import pyarrow.compute as pc

    return batch.filter(pc.equal(batch[column], name))


def _actor_args(placement: Placement) -> dict[str, t.Any]:
    """map_batches' resource arguments for one actor pool: its own CPUs and GPUs, and a
    placement group per actor for an engine over several GPUs."""
    args: dict[str, t.Any] = {"num_cpus": placement.num_cpus, "num_gpus": placement.num_gpus}
    if placement.bundles is not None:
        args["ray_remote_args_fn"] = BatchGroups(placement)
    return args


def generator_members(
    generator: Generator | str | None, generators: t.Sequence[Generator | str] | None
) -> list[Generator]:
    if (generator is None) == (generators is None):
        raise InvalidGeneratorError("give either generator= or generators=, not both or neither")
    chosen = [generator] if generator is not None else list(t.cast(t.Sequence, generators))
    if not chosen:
        raise InvalidGeneratorError("generators= is empty; give at least one")
    members = []
    for value in chosen:
        member = get_generator(value) if isinstance(value, str) else value
        if not isinstance(member, Generator):
            raise InvalidGeneratorError(
                f"a generator must be a Generator or an identifier string, not "
                f"{type(value).__name__}"
            )
        if type(member).generate_messages is Generator.generate_messages:
            raise InvalidGeneratorError(
                f"{type(member).__name__} does not generate chat messages, which batch jobs use"
            )
        members.append(member)
    return members
