"""The Ray Data step that runs one generator over batches of rows: `GenerateStage`.

Ray Data keeps a pool of these in actors; each loads its generator once, in `__init__`, and
turns every batch of input rows into output rows, one per generation, with one engine call.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import typing as t

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from rig_ray.batch.parsed import StructuredSpec, generate_messages, structured_step
from rig_ray.batch.plan import member_indices
from rig_ray.batch.prepare import ID_COLUMN, TODO_COLUMN
from rig_ray.batch.prompts import PromptSpec
from rig_ray.batch.schema import OUTPUT_SCHEMA, passthrough_names
from rig_ray.cluster.options import restore_payload
from rig_ray.cluster.remote_generator import describe
from rig_ray.generator import seeds
from rig_ray.generator.base import GeneratedMessage, GenerateParams, Generator
from rig_ray.message import Message
from rig_ray.redaction import redact


class StageConfig(BaseModel):
    """Everything a stage needs besides its generator, shipped to its actors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompts: PromptSpec
    member: int = Field(0, ge=0)
    """Which of `members` generators this stage runs."""
    members: int = Field(1, ge=1)
    num_generations: int = Field(1, ge=1)
    seed: int | None = None
    params: GenerateParams = Field(default_factory=GenerateParams)
    input_columns: tuple[str, ...]
    """The input's columns, in order, written through after the generation columns."""
    batch_timeout_s: float | None = Field(None, gt=0)
    """A batch whose engine call runs longer fails its rows with a timeout error."""
    structured: StructuredSpec | None = None
    """What to read out of each reply into typed columns (parse_as / json_schema)."""


class _Pending(t.NamedTuple):
    row: int
    row_id: str
    generation_index: int


class GenerateStage:
    """A Ray Data async callable class: input rows in, one output row per generation out.

    `__call__` is a coroutine, so Ray Data runs up to `max_concurrent_batches` of them at once
    on one event loop in each actor: the engine is refilled while earlier batches finish.
    """

    def __init__(self, payload: bytes, config: StageConfig) -> None:
        # The job prints its own progress; download and loading bars in actors are noise.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        self._config = config
        self._generator: Generator = restore_payload(payload)
        self._name = redact(describe(self._generator))
        self._passthrough = passthrough_names(config.input_columns, config.prompts.id_column)
        self._structured = structured_step(config.structured, self._passthrough.values())
        self._generator.load()

    async def __call__(self, batch: pa.Table) -> pa.Table:
        config = self._config
        rows = batch.to_pylist()
        pending: list[_Pending] = []
        conversations: list[list[Message]] = []
        params: list[GenerateParams] = []
        failures: dict[int, str] = {}  # row -> why its prompt could not be made
        for index, row in enumerate(rows):
            row_id, todo = self._todo(row)
            if not todo:
                continue
            try:
                conversation = config.prompts.conversation(row)
                row_params = config.prompts.row_params(row, config.params)
            except Exception as error:  # a row that cannot be read fails alone
                failures[index] = _error_text(error)
            for generation_index in todo:
                pending.append(_Pending(index, row_id, generation_index))
                if index not in failures:
                    conversations.append(conversation)
                    params.append(seeds.for_sample(row_params, row_id, generation_index))
        results, latency = await self._generate(conversations, params)
        return self._output(batch, pending, failures, iter(results), latency)

    def _todo(self, row: dict[str, t.Any]) -> tuple[str, list[int]]:
        """The row's id, and the generation indices of it that this stage's generator makes:
        its share of the row's generations, less those already done (`run` prepares rows
        with their id and what is left; a plain dataset has every generation to make)."""
        config = self._config
        row_id = row.get(ID_COLUMN)
        if row_id is None:
            row_id = config.prompts.row_id(row)
        owned = member_indices(row_id, config.num_generations, config.members, config.seed)
        left = row.get(TODO_COLUMN)
        mine = owned[config.member]
        return row_id, list(mine) if left is None else [g for g in left if g in mine]

    async def _generate(
        self, conversations: list[list[Message]], params: list[GenerateParams]
    ) -> tuple[t.Sequence[GeneratedMessage | BaseException], float]:
        if not conversations:
            return [], 0.0
        started = time.perf_counter()
        generate = self._structured.generate if self._structured else generate_messages
        call = generate(self._generator, conversations, params)
        try:
            results = await asyncio.wait_for(call, self._config.batch_timeout_s)
        except TimeoutError:
            timeout = TimeoutError(
                f"the batch took longer than batch_timeout_s={self._config.batch_timeout_s:g}"
            )
            results = [timeout] * len(conversations)
        except Exception as error:  # the whole call failed: every item gets the error
            results = [error] * len(conversations)
        return results, time.perf_counter() - started

    def _output(
        self,
        batch: pa.Table,
        pending: list[_Pending],
        failures: dict[int, str],
        results: t.Iterator[GeneratedMessage | BaseException],
        latency: float,
    ) -> pa.Table:
        columns: dict[str, list[t.Any]] = {name: [] for name in OUTPUT_SCHEMA.names}
        row_results: list[GeneratedMessage | BaseException | None] = []
        for item in pending:
            result: GeneratedMessage | BaseException | None = (
                None if item.row in failures else next(results)
            )
            row_results.append(result)
            ok = isinstance(result, GeneratedMessage)
            usage = result.usage if isinstance(result, GeneratedMessage) else None
            values = {
                "id": item.row_id,
                "generation_index": item.generation_index,
                "generator": self._name,
                "model": self._generator.model,
                "text": result.message.content if isinstance(result, GeneratedMessage) else None,
                "stop_reason": result.stop_reason if isinstance(result, GeneratedMessage) else None,
                "input_tokens": usage.input_tokens if usage else None,
                "output_tokens": usage.output_tokens if usage else None,
                "latency_s": latency if result is not None else None,
                "error": None
                if ok
                else failures.get(item.row) or _error_text(t.cast(BaseException, result)),
                "metadata": _metadata(result) if isinstance(result, GeneratedMessage) else None,
            }
            for name, value in values.items():
                columns[name].append(value)
        generated = pa.Table.from_pydict(columns, schema=OUTPUT_SCHEMA)
        if self._structured:
            generated = self._structured.finish(generated, row_results)
        inputs = batch.take(pa.array([item.row for item in pending], type=pa.int64()))
        for column, out in self._passthrough.items():
            if column in inputs.column_names:
                generated = generated.append_column(out, inputs.column(column))
        return generated


def _metadata(result: GeneratedMessage) -> str | None:
    return json.dumps(result.extra, default=str, sort_keys=True) if result.extra else None


def _error_text(error: BaseException) -> str:
    text = redact(" ".join(str(error).split()))
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
