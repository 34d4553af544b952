"""Structured batch outputs: replies parsed as a `Model` (asked again until they parse) or read
as JSON (`json_schema`), written as typed columns.

The parse-and-retry step is `ChatPipeline.until_parsed_as`: each round sends only the rows still
unparsed, in one engine batch, each with its reply and the parse error. A row that never
parses keeps its last reply, gets null parsed columns and an `error` that names the failure.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import typing as t

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from rig_ray.batch.columns import (
    PARSE_RETRIES,
    check_cells,
    model_columns,
    name_columns,
    schema_columns,
    typed_array,
)
from rig_ray.batch.schema import OUTPUT_COLUMNS
from rig_ray.chat import Chat
from rig_ray.errors import BatchInputError, ParseError, ParseRetriesExhaustedError
from rig_ray.generator.base import GeneratedMessage, Generator
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.structured import honours_json_schema, refuse_json_schema, schema_dict
from rig_ray.message import Message
from rig_ray.model import Model, class_key, model_class
from rig_ray.redaction import redact

DEFAULT_MAX_PARSE_RETRIES = 2
"""How many times a batch job asks again for a reply that does not parse."""


class StructuredSpec(BaseModel):
    """What a batch job reads out of each reply: a `Model` (`parse_as`) or JSON (`json_schema`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_payload: bytes | None = None
    """The `parse_as` class, pickled (by value when it lives outside rig_ray, so a class from
    a script or a test file works in actors that cannot import its module)."""
    model_key: str | None = None
    """`module:qualname` of the `parse_as` class: where it is defined in this process already
    (the driver, or a worker that imported it), that class is used rather than a copy."""
    json_schema: dict[str, t.Any] | None = None
    max_parse_retries: int = Field(DEFAULT_MAX_PARSE_RETRIES, ge=0)

    @classmethod
    def build(
        cls,
        parse_as: type[Model] | None,
        json_schema: t.Any,
        max_parse_retries: int = DEFAULT_MAX_PARSE_RETRIES,
    ) -> StructuredSpec | None:
        """The spec of a job's options (None: plain text); bad options raise BatchInputError."""
        if parse_as is not None and json_schema is not None:
            raise BatchInputError("give parse_as or json_schema, not both")
        if not isinstance(max_parse_retries, int) or max_parse_retries < 0:
            raise BatchInputError(f"max_parse_retries must be >= 0, got {max_parse_retries!r}")
        if parse_as is not None:
            if not (isinstance(parse_as, type) and issubclass(parse_as, Model)):
                raise BatchInputError(
                    f"parse_as must be a rig_ray.Model subclass, not {parse_as!r}"
                )
            return cls(
                model_payload=_pack(parse_as),
                model_key=class_key(parse_as),
                max_parse_retries=max_parse_retries,
            )
        if json_schema is not None:
            try:
                schema = schema_dict(json_schema)
            except (TypeError, ValueError) as error:
                raise BatchInputError(f"json_schema: {error}") from None
            spec = cls(json_schema=schema, max_parse_retries=max_parse_retries)
            spec.fields()  # an unusable schema fails here, in the driver
            return spec
        return None

    @property
    def model(self) -> type[Model] | None:
        if self.model_payload is None:
            return None
        return model_class(self.model_key or "") or _unpack(self.model_payload)

    def fields(self) -> list[tuple[str, pa.DataType, bool]]:
        model = self.model
        if model is not None:
            return model_columns(model)
        return schema_columns(self.json_schema or {})


class ParsedReply(GeneratedMessage):
    """A reply with what was read out of it (`values`), or why nothing could be."""

    values: dict[str, t.Any] | None = None
    parse_retries: int | None = None
    parse_error: str | None = None


class StructuredStep:
    """Runs in a batch stage: generates with parsing (and retries), then adds the columns."""

    def __init__(self, spec: StructuredSpec, taken: t.Iterable[str]) -> None:
        self.spec = spec
        self.model = spec.model
        taken = set(taken)
        retries = name_columns([(PARSE_RETRIES, pa.int32(), False)], taken) if self.model else []
        self.columns = name_columns(spec.fields(), taken | {c.name for c in retries})
        self.retries_column = retries[0].name if retries else None

    async def generate(
        self,
        generator: Generator,
        conversations: list[list[Message]],
        params: list[GenerateParams],
    ) -> list[GeneratedMessage | BaseException]:
        """One result per conversation: a `ParsedReply`, or the generation's error."""
        if self.model is None:
            results = await generator.generate_messages(conversations, params)
            return [self._read_json(r) for r in results]
        pipeline = generator.chat().until_parsed_as(
            self.model, max_depth=self.spec.max_parse_retries
        )
        chats = await pipeline.catch().run_batch(conversations, params)
        return [self._from_chat(chat) for chat in chats]

    def _from_chat(self, chat: Chat) -> GeneratedMessage | BaseException:
        exhausted = isinstance(chat.error, ParseRetriesExhaustedError)
        if chat.failed and not exhausted:
            return t.cast(BaseException, chat.error)
        reply = chat.generated[-1] if chat.generated else Message(role="assistant", content="")
        values = None
        if not chat.failed:
            parsed = [p.model for p in reply.parts if isinstance(p.model, t.cast(type, self.model))]
            values = parsed[0].model_dump() if parsed else None
        return self._reply(
            reply,
            chat,
            values,
            parse_retries=int(chat.extra.get("parse_retries", 0)),
            parse_error=_error_text(chat.error) if chat.error is not None else None,
        )

    def _read_json(
        self, result: GeneratedMessage | BaseException
    ) -> GeneratedMessage | BaseException:
        if isinstance(result, BaseException):
            return result
        values, problem = None, None
        try:
            loaded = json.loads(result.message.content)
        except ValueError as error:
            problem = f"the reply is not JSON ({error})"
        else:
            if isinstance(loaded, dict):
                values = loaded
            else:
                problem = f"the reply is JSON but not an object ({type(loaded).__name__})"
        why = _error_text(ParseError(problem, model="json_schema")) if problem else None
        return self._reply(result.message, result, values, parse_retries=None, parse_error=why)

    @staticmethod
    def _reply(
        message: Message,
        source: t.Any,
        values: dict[str, t.Any] | None,
        *,
        parse_retries: int | None,
        parse_error: str | None,
    ) -> ParsedReply:
        return ParsedReply(
            message=message,
            stop_reason=source.stop_reason,
            usage=source.usage,
            extra=dict(source.extra),
            values=values,
            parse_retries=parse_retries,
            parse_error=parse_error,
        )

    def finish(self, table: pa.Table, results: t.Sequence[t.Any]) -> pa.Table:
        """`table` (one row per result; None where no prompt could be made) with the parse
        errors in `error` and the typed columns (and `parse_retries`) added after it."""
        errors = table.column("error").to_pylist()
        values: list[dict[str, t.Any] | None] = []
        for index, result in enumerate(results):
            parsed = result if isinstance(result, ParsedReply) else None
            if parsed is not None and parsed.parse_error is not None:
                errors[index] = parsed.parse_error
            values.append(parsed.values if parsed is not None else None)
        arrays = self._arrays(values, errors)
        table = table.set_column(
            table.schema.get_field_index("error"), "error", pa.array(errors, type=pa.string())
        )
        for column, array in zip(self.columns, arrays, strict=True):
            table = table.append_column(pa.field(column.name, column.type), array)
        if self.retries_column is not None:
            counts = [r.parse_retries if isinstance(r, ParsedReply) else None for r in results]
            table = table.append_column(self.retries_column, pa.array(counts, type=pa.int32()))
        return table

    def _arrays(self, values: list[dict[str, t.Any] | None], errors: list[t.Any]) -> list[pa.Array]:
        """The typed columns; a row whose values do not fit the types is nulled, with why."""
        try:
            return [typed_array(column, values) for column in self.columns]
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            pass
        for index, row in enumerate(values):
            problem = check_cells(self.columns, row) if row is not None else None
            if problem is not None:
                values[index] = None
                errors[index] = _error_text(ParseError(f"the reply's {problem}", model="columns"))
        return [typed_array(column, values) for column in self.columns]


def _error_text(error: BaseException) -> str:
    text = redact(" ".join(str(error).split()))
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _pack(model: type[Model]) -> bytes:
    from ray import cloudpickle

    module = sys.modules.get(model.__module__)
    by_value = (
        module is not None
        and model.__module__ != "__main__"
        and not model.__module__.startswith("rig_ray")
        and model.__module__ not in cloudpickle.list_registry_pickle_by_value()
    )
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        return t.cast(bytes, cloudpickle.dumps(model))
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)


@functools.lru_cache(maxsize=8)
def _unpack(payload: bytes) -> type[Model]:
    from ray import cloudpickle

    return t.cast(type[Model], cloudpickle.loads(payload))


def structured_step(
    spec: StructuredSpec | None, passthrough: t.Iterable[str]
) -> StructuredStep | None:
    """The step of a stage whose output rows have the generation columns and `passthrough`
    (input) columns; None without a spec."""
    if spec is None:
        return None
    return StructuredStep(spec, [*OUTPUT_COLUMNS, *passthrough])


async def generate_messages(
    generator: Generator, conversations: list[list[Message]], params: list[GenerateParams]
) -> t.Sequence[GeneratedMessage | BaseException]:
    """A plain engine call, as a stage makes it without a structured spec."""
    return await generator.generate_messages(conversations, params)


def with_json_schema(
    members: t.Sequence[Generator], params: GenerateParams | None, spec: StructuredSpec | None
) -> GenerateParams:
    """The job's params with the spec's JSON schema in them; a generator that cannot honour
    a schema (the job's, or one already in the params) is refused before anything runs."""
    params = params or GenerateParams()
    if spec is not None and spec.json_schema is not None:
        params = params.merge_with(GenerateParams(json_schema=spec.json_schema))
    if params.json_schema is not None or any(m.params.json_schema for m in members):
        for member in members:
            if not honours_json_schema(member):
                raise refuse_json_schema(member)
    return params


# -- command line --------------------------------------------------------------------------


def add_structured_arguments(parser: argparse.ArgumentParser) -> None:
    """`--parse-as`, `--max-parse-retries` and `--json-schema` of `rig-ray batch`."""
    parser.add_argument(
        "--parse-as",
        metavar="MODULE:CLASS",
        help="parse each reply as this rig_ray.Model (from the working directory or an "
        "installed package), ask again where it does not parse, one typed column per field",
    )
    parser.add_argument(
        "--max-parse-retries",
        type=int,
        default=DEFAULT_MAX_PARSE_RETRIES,
        metavar="N",
        help=f"rounds of asking again for replies that do not parse ({DEFAULT_MAX_PARSE_RETRIES})",
    )
    parser.add_argument(
        "--json-schema",
        metavar="FILE.json",
        help="constrain replies to this JSON schema (vLLM, LiteLLM); one typed column per "
        "top-level property",
    )


def structured_options(args: argparse.Namespace) -> dict[str, t.Any]:
    """`run` options from the structured arguments."""
    options: dict[str, t.Any] = {"max_parse_retries": args.max_parse_retries}
    if args.parse_as:
        options["parse_as"] = import_model(args.parse_as)
    if args.json_schema:
        options["json_schema"] = read_schema(args.json_schema)
    return options


def import_model(spec: str) -> type[Model]:
    """The `rig_ray.Model` subclass named `module:Class`, importable from the working
    directory or the installed packages."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise BatchInputError(f"--parse-as takes module:Class, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: t.Any = importlib.import_module(module_name)
        for part in name.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as error:
        raise BatchInputError(f"--parse-as {spec!r}: cannot import it ({error})") from None
    if not (isinstance(found, type) and issubclass(found, Model)):
        raise BatchInputError(f"--parse-as {spec!r} is not a rig_ray.Model subclass")
    return found


def read_schema(path: str) -> dict[str, t.Any]:
    """A JSON schema file, as a dict."""
    try:
        with open(path) as file:
            schema = json.load(file)
    except (OSError, ValueError) as error:
        raise BatchInputError(f"--json-schema {path!r}: cannot read it ({error})") from None
    if not isinstance(schema, dict):
        raise BatchInputError(f"--json-schema {path!r} does not hold a JSON object")
    return schema
