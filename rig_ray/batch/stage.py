"""The Ray Data step that runs one generator over batches of rows: `GenerateStage`.

Ray Data keeps a pool of these in actors; each loads its generator once, in `__init__`, and
turns every batch of input rows into output rows, one per generation, with one engine call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
import typing as t

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from rig_ray.batch.parsed import StructuredSpec, generate_messages, structured_step
from rig_ray.batch.plan import member_indices
from rig_ray.batch.prepare import ID_COLUMN, TODO_COLUMN, row_generations
from rig_ray.batch.prompts import PromptSpec, table_rows
from rig_ray.batch.schema import OUTPUT_SCHEMA, passthrough_names
from rig_ray.cluster.gpu_turns import load_in_turn
from rig_ray.cluster.options import restore_payload
from rig_ray.cluster.remote_generator import RemoteGenerator, describe
from rig_ray.errors import BatchStoppedError, EngineDeadError
from rig_ray.generator import seeds
from rig_ray.generator.base import GeneratedMessage, GeneratedText, Generator
from rig_ray.generator.local import BATCH_STARTED, LocalGenerator
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.vllm_sizing import in_flight
from rig_ray.message import Message
from rig_ray.redaction import error_text, redact, scrubbed_error

logger = logging.getLogger(__name__)

EXIT_UNLOAD_S = 60.0
"""How long an actor whose engine died waits for the unload before it exits all the same."""


_R = t.TypeVar("_R")


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
    generations_column: str | None = None
    """The column with each row's own number of generations (at most num_generations)."""
    seeds: t.Literal["row", "request"] = "row"
    """How a seeded sample is seeded: from (seed, row id, generation index), or as the
    endpoint seeds one request's choices (see `rig_ray.generator.seeds`)."""
    row_requests: int | None = Field(None, ge=1)
    """Rows go to the engine one request at a time, at most this many per actor at once (1.1 x
    the loaded engine's capacity, where it reports one); None: one engine call per batch."""


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
        self._slots: asyncio.Semaphore | None = None
        try:
            load_in_turn(self._generator)
        except Exception as error:  # the driver shows this error: it must not quote a key
            raise scrubbed_error(error, self._generator) from None
        self._one_batch_at_a_time = isinstance(self._generator, LocalGenerator) and not (
            self._generator.batches_continuously
        )
        if isinstance(self._generator, LocalGenerator):  # a dead engine: the actor restarts
            self._generator.leave_a_dead_engine_to_its_owner()

    def __del__(self) -> None:
        """The engine goes with the actor: Ray Data drops the stage when it ends its actors
        (`__ray_shutdown__` of its worker), and an engine left behind would keep its
        processes and memory. An engine in an actor of its own (`rr.remote()`) is its
        owner's, and stays as it is."""
        generator = getattr(self, "_generator", None)
        if generator is not None and not isinstance(generator, RemoteGenerator):
            with contextlib.suppress(Exception):
                generator.unload()

    async def __call__(self, batch: pa.Table) -> pa.Table:
        config = self._config
        rows = table_rows(batch)
        pending: list[_Pending] = []
        chats = _Items[list[Message]]()
        texts = _Items[str]()
        failures: dict[int, str] = {}  # row -> why its prompt could not be made
        for index, row in enumerate(rows):
            row_id, todo = self._todo(row)
            if not todo:
                continue
            text: str | None = None
            try:
                text = config.prompts.text_prompt(row)
                conversation = [] if text is not None else config.prompts.conversation(row)
                row_params = config.prompts.row_params(row, config.params)
            except Exception as error:  # a row that cannot be read fails alone
                failures[index] = _error_text(error, self._generator)
            for generation_index in todo:
                pending.append(_Pending(index, row_id, generation_index))
                if index in failures:
                    continue
                sample_params = (
                    seeds.for_request_sample(row_params, generation_index)
                    if config.seeds == "request"
                    else seeds.for_sample(row_params, row_id, generation_index)
                )
                if text is not None:
                    texts.add(len(pending) - 1, text, sample_params)
                else:
                    chats.add(len(pending) - 1, conversation, sample_params)
        chat_results, latency = await self._generate(chats.items, chats.params)
        text_results, text_latency = await self._generate_texts(texts.items, texts.params)
        by_pending = {**chats.placed(chat_results), **texts.placed(text_results)}
        results = (by_pending[number] for number in sorted(by_pending))
        return self._output(batch, pending, failures, results, latency + text_latency)

    def _todo(self, row: dict[str, t.Any]) -> tuple[str, list[int]]:
        """The row's id, and the generation indices of it that this stage's generator makes:
        its share of the row's generations, less those already done (`run` prepares rows
        with their id and what is left; a plain dataset has every generation to make)."""
        config = self._config
        row_id = row.get(ID_COLUMN)
        if row_id is None:
            row_id = config.prompts.row_id(row)
        count = config.num_generations
        if config.generations_column is not None:
            count = row_generations(row.get(config.generations_column), count)
        owned = member_indices(row_id, count, config.members, config.seed)
        left = row.get(TODO_COLUMN)
        mine = owned[config.member]
        return row_id, list(mine) if left is None else [g for g in left if g in mine]

    async def _generate(
        self, conversations: list[list[Message]], params: list[GenerateParams]
    ) -> tuple[t.Sequence[GeneratedMessage | BaseException], float]:
        if not conversations:
            return [], 0.0
        if self._config.row_requests is not None:  # each row's clock is its own
            return await self._timed(
                lambda: self._row_by_row(conversations, params), len(conversations), timed=False
            )
        generate = self._structured.generate if self._structured else generate_messages
        return await self._timed(
            lambda: generate(self._generator, conversations, params), len(conversations)
        )

    async def _row_by_row(
        self, conversations: list[list[Message]], params: list[GenerateParams]
    ) -> list[GeneratedMessage | BaseException]:
        """Each item as its own engine call, holding one of the actor's row slots while it
        runs: the batches of this actor share the engine, and a slow row keeps only its slot.
        `batch_timeout_s` counts from when a row has its slot, not while it waits for one."""
        slots = await self._row_slots()
        generate = self._structured.generate if self._structured else generate_messages
        timeout = self._config.batch_timeout_s

        async def one(conversation: list[Message], item: GenerateParams) -> t.Any:
            async with slots:
                clock = asyncio.timeout(timeout)
                try:
                    async with clock:
                        return (await generate(self._generator, [conversation], [item]))[0]
                except BatchStoppedError:
                    raise
                except Exception as error:  # the call failed: this item gets the error
                    if isinstance(error, TimeoutError) and clock.expired():
                        return TimeoutError(
                            f"the row took longer than batch_timeout_s={timeout:g} on the engine"
                        )
                    return error

        return list(await asyncio.gather(*map(one, conversations, params)))

    async def _row_slots(self) -> asyncio.Semaphore:
        if self._slots is None:
            capacity = await self._generator.capacity()
            size = in_flight(capacity) if capacity else self._config.row_requests
            if self._slots is None:  # another batch may have made them meanwhile
                self._slots = asyncio.Semaphore(size or 1)
        return self._slots

    async def _generate_texts(
        self, texts: list[str], params: list[GenerateParams]
    ) -> tuple[t.Sequence[GeneratedText | BaseException], float]:
        if not texts:
            return [], 0.0
        return await self._timed(lambda: self._generator.generate_texts(texts, params), len(texts))

    async def _timed(
        self, make: t.Callable[[], t.Awaitable[t.Sequence[_R]]], count: int, timed: bool = True
    ) -> tuple[t.Sequence[_R | BaseException], float]:
        """Run the engine call `make()` under `batch_timeout_s` (unless not `timed`: it times
        its rows itself): on an engine that runs one call at a time, the clock starts when
        the engine takes the call, not while it waits."""
        started = time.perf_counter()
        running = asyncio.Event()
        token = BATCH_STARTED.set(running.set)
        try:  # the task copies the context, and with it the callback, now
            call = asyncio.ensure_future(make())
        finally:
            BATCH_STARTED.reset(token)
        timeout = self._config.batch_timeout_s if timed else None
        results: t.Sequence[_R | BaseException]
        try:
            if timeout is not None and self._one_batch_at_a_time:
                waiting = asyncio.ensure_future(running.wait())
                await asyncio.wait({call, waiting}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
            results = await asyncio.wait_for(call, timeout)
        except TimeoutError:  # the call was cancelled: the engine thread stops on it
            timeout_error = TimeoutError(
                f"the batch took longer than batch_timeout_s={self._config.batch_timeout_s:g}"
            )
            results = [timeout_error] * count
        except BatchStoppedError:  # the job stops: its rows are not made, nor failed
            raise
        except Exception as error:  # the whole call failed: every item gets the error
            results = [error] * count
        if dead := next((r for r in results if _engine_died(r)), None):
            self._exit_for_restart(t.cast(BaseException, dead))
        return results, time.perf_counter() - started

    def _exit_for_restart(self, error: BaseException) -> t.NoReturn:
        """A dead engine fails no rows: the actor unloads what is left of it and exits, so Ray
        starts it again and retries its batches (up to `max_restarts`). `os._exit` is a system
        failure to Ray, which retries the task; an orderly actor exit would not."""
        logger.error(
            "%s: the engine died (%s); the actor exits to be restarted",
            self._name,
            error_text(error, self._generator),
        )
        unloading = threading.Thread(target=self.__del__, name="rig_ray-unload", daemon=True)
        unloading.start()
        unloading.join(EXIT_UNLOAD_S)
        os._exit(1)

    def _output(
        self,
        batch: pa.Table,
        pending: list[_Pending],
        failures: dict[int, str],
        results: t.Iterator[GeneratedMessage | GeneratedText | BaseException],
        latency: float,
    ) -> pa.Table:
        columns: dict[str, list[t.Any]] = {name: [] for name in OUTPUT_SCHEMA.names}
        row_results: list[GeneratedMessage | GeneratedText | BaseException | None] = []
        for item in pending:
            result: GeneratedMessage | GeneratedText | BaseException | None = (
                None if item.row in failures else next(results)
            )
            row_results.append(result)
            done = result if isinstance(result, GeneratedMessage | GeneratedText) else None
            ok = done is not None
            usage = done.usage if done else None
            values = {
                "id": item.row_id,
                "generation_index": item.generation_index,
                "generator": self._name,
                "model": self._generator.model,
                "text": done.text if done else None,
                "stop_reason": done.stop_reason if done else None,
                "input_tokens": usage.input_tokens if usage else None,
                "output_tokens": usage.output_tokens if usage else None,
                "latency_s": latency if result is not None else None,
                "error": None
                if ok
                else failures.get(item.row)
                or _error_text(t.cast(BaseException, result), self._generator),
                "metadata": _metadata(done) if done else None,
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


_Item = t.TypeVar("_Item")


class _Items(t.Generic[_Item]):
    """One engine call's items, each with its params and its place among the pending."""

    def __init__(self) -> None:
        self.places: list[int] = []
        self.items: list[_Item] = []
        self.params: list[GenerateParams] = []

    def add(self, place: int, item: _Item, params: GenerateParams) -> None:
        self.places.append(place)
        self.items.append(item)
        self.params.append(params)

    def placed(self, results: t.Sequence[t.Any]) -> dict[int, t.Any]:
        return dict(zip(self.places, results, strict=True))


def _engine_died(result: object) -> bool:
    """Whether a result is the error of an engine whose process died (ours, or vLLM's own)."""
    return isinstance(result, EngineDeadError) or type(result).__name__ == "EngineDeadError"


def _metadata(result: GeneratedMessage | GeneratedText) -> str | None:
    return json.dumps(result.extra, default=str, sort_keys=True) if result.extra else None


def _error_text(error: BaseException, generator: Generator) -> str:
    """The error column's text: redacted, and scrubbed with the generator's own secrets (its
    api_key, and those of its identifier), so a provider error that quotes the key loses it."""
    return error_text(error, generator)
