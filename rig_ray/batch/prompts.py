"""How a batch job turns an input row into a conversation and an id."""

from __future__ import annotations

import hashlib
import json
import typing as t

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from rig_ray.errors import BatchInputError, InvalidMessageError, did_you_mean, validation_line
from rig_ray.generator.params import GenerateParams
from rig_ray.message import FieldTemplate, Message, template_fields

if t.TYPE_CHECKING:
    import pyarrow as pa

DEFAULT_PROMPT_COLUMN = "prompt"
"""The column used as the user message when neither a template nor a messages column is given."""
DEFAULT_MESSAGES_COLUMN = "messages"
"""The column read as an OpenAI conversation when it exists and no template is given."""


class PromptSpec(BaseModel):
    """Where each row's conversation and id come from.

    One of: `template` (a user message with `$column` fields), or `messages_column` (a list of
    OpenAI-shaped messages). `system` is put first unless the conversation already starts with
    a system message. Rows without a value in `id_column` get an id made from their content.
    `params_column`, when given, holds each row's own params (e.g. `{"max_tokens": 64}`),
    laid over the job's. `text_column`, when given, holds a raw text prompt: a row with one
    there gets a text completion of it (no chat template) instead of a conversation.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    template: str | None = None
    system: str | None = None
    messages_column: str | None = None
    id_column: str = "id"
    params_column: str | None = None
    text_column: str | None = None

    @field_validator(
        "template", "system", "messages_column", "id_column", "params_column", "text_column"
    )
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @classmethod
    def build(cls, **settings: t.Any) -> PromptSpec:
        """A spec of these settings; `BatchInputError` naming the one that is not valid."""
        try:
            return cls(**settings)
        except ValidationError as error:
            raise BatchInputError(validation_line(error)) from None

    def prompt_columns(self) -> list[str]:
        """The columns the prompt reads: the template's fields, or the messages column
        (none before `resolve` where neither is set)."""
        if self.template is not None:
            return template_fields(self.template)
        return [self.messages_column] if self.messages_column is not None else []

    def named_columns(self) -> list[str]:
        """The input columns these settings name: the prompt's, the params and text columns."""
        extra = (self.params_column, self.text_column)
        return [*self.prompt_columns(), *(column for column in extra if column is not None)]

    def resolve(self, columns: t.Sequence[str]) -> PromptSpec:
        """This spec checked against the input's `columns`, with defaults picked.

        Without a template or a messages column, a `messages` column is used if there is one,
        else `$prompt`. Raises `BatchInputError` naming any column that is missing.
        """
        if self.template is not None and self.messages_column is not None:
            raise BatchInputError("give a template or a messages column, not both")
        spec = self
        if self.template is None and self.messages_column is None:
            if DEFAULT_MESSAGES_COLUMN in columns:
                spec = self.model_copy(update={"messages_column": DEFAULT_MESSAGES_COLUMN})
            elif DEFAULT_PROMPT_COLUMN in columns:
                spec = self.model_copy(update={"template": f"${DEFAULT_PROMPT_COLUMN}"})
            else:
                raise BatchInputError(
                    "no template given and the input has neither a 'prompt' nor a 'messages' "
                    f"column (columns: {_listed(columns)})",
                    column=DEFAULT_PROMPT_COLUMN,
                )
        if spec.template is not None and not FieldTemplate(spec.template).is_valid():
            raise BatchInputError(
                f"template {spec.template!r} has a '$' that starts no field: write '$$' for a "
                "literal '$', and $name or ${any name} for a column"
            )
        needed = spec.prompt_columns()
        for kind, extra in (("params", spec.params_column), ("text", spec.text_column)):
            if extra is not None and extra not in columns:
                raise BatchInputError(
                    f"{kind} column {extra!r} is not a column of the input"
                    f"{did_you_mean(extra, columns)} (columns: {_listed(columns)})",
                    column=extra,
                )
        for column in needed:
            if column not in columns:
                what = "template field" if spec.template is not None else "messages column"
                raise BatchInputError(
                    f"{what} {column!r} is not a column of the input"
                    f"{did_you_mean(column, columns)} (columns: {_listed(columns)})",
                    column=column,
                )
        return spec

    def text_prompt(self, row: t.Mapping[str, t.Any]) -> str | None:
        """The row's raw text prompt, when it has one (then it is completed, not chatted)."""
        if self.text_column is None:
            return None
        value = row.get(self.text_column)
        return None if value is None else str(_text(value, self.text_column))

    def conversation(self, row: t.Mapping[str, t.Any]) -> list[Message]:
        """The row's conversation; `BatchInputError` when a value it needs is null."""
        if self.template is not None:
            values = {}
            for name in template_fields(self.template):
                value = row.get(name)
                if value is None:
                    raise BatchInputError(f"column {name!r} is null in this row", column=name)
                values[name] = _text(value, name)
            user = Message(role="user", content=FieldTemplate(self.template).substitute(values))
            messages = [user]
        else:
            column = t.cast(str, self.messages_column)
            raw = row.get(column)
            if not isinstance(raw, list | tuple):
                kind = "null" if raw is None else f"a {type(raw).__name__}"
                raise BatchInputError(
                    f"column {column!r} is {kind} in this row, not a list of messages",
                    column=column,
                )
            if not raw:
                raise BatchInputError(f"column {column!r} is empty in this row", column=column)
            try:
                messages = [Message.fit(_openai_shaped(_without_nulls(item))) for item in raw]
            except (InvalidMessageError, ValueError, TypeError) as error:
                raise BatchInputError(
                    f"column {column!r} is not a list of OpenAI messages (or of ShareGPT's "
                    f"human / gpt / system ones): {error}",
                    column=column,
                ) from error
        if self.system is not None and messages[0].role != "system":
            messages.insert(0, Message(role="system", content=self.system))
        return messages

    def row_params(self, row: t.Mapping[str, t.Any], base: GenerateParams) -> GenerateParams:
        """`base` with the row's own params (from `params_column`: an object, or its JSON)
        laid over it; `BatchInputError` when they are not valid params."""
        column = self.params_column
        raw = None if column is None else row.get(column)
        if column is None or raw is None:
            return base
        try:
            values = json.loads(raw) if isinstance(raw, str) else raw
            if not isinstance(values, t.Mapping):
                raise TypeError(f"a {type(values).__name__}, not an object of params")
            # Arrow gives every row of a struct column every key: unset ones are null.
            own = GenerateParams.model_validate({k: v for k, v in values.items() if v is not None})
        except (ValueError, TypeError, ValidationError) as error:
            reason = " ".join(str(error).split())
            raise BatchInputError(
                f"column {column!r} does not hold valid params in this row: {reason}",
                column=column,
            ) from error
        return base.merge_with(own)

    def row_id(self, row: t.Mapping[str, t.Any]) -> str:
        """The row's id: its `id_column` value as a string, else `content_id` of its
        `content_key`.

        (Identical rows get the same content id here; `rig_ray.batch.run` tells them apart
        by numbering each among its identical twins only: `#1`, `#2`, ...)
        """
        value = row.get(self.id_column)
        if value is not None and value != "":  # an empty CSV cell is no id
            return id_text(value)
        return content_id(self.content_key(row))

    def content_key(self, row: t.Mapping[str, t.Any]) -> t.Any:
        """Everything of a row that changes its output: its conversation, and its own params
        (from `params_column`) when it has any. The job's settings are the manifest's."""
        prompt = self.prompt_key(row)
        raw = None if self.params_column is None else row.get(self.params_column)
        if raw is None:
            return prompt
        try:
            values = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            values = raw
        if isinstance(values, t.Mapping):
            values = {k: v for k, v in values.items() if v is not None}
            if not values:
                return prompt
        return {"prompt": prompt, "params": values}

    def prompt_key(self, row: t.Mapping[str, t.Any]) -> t.Any:
        """What a row contributes to its prompt: the conversation after template and system.

        Columns the prompt does not use, and nulls, are not in it. A row that cannot be
        rendered is keyed by the non-null values of the columns its prompt reads.
        """
        try:
            return [[m.role, m.content] for m in self.conversation(row)]
        except BatchInputError:
            used = self.prompt_columns()
            return {"unrendered": {c: row[c] for c in used if row.get(c) is not None}}


def job_params(value: t.Any) -> GenerateParams | None:
    """A job's `params`: `GenerateParams`, or a mapping of its fields, as one;
    `BatchInputError` naming what is wrong."""
    if value is None or isinstance(value, GenerateParams):
        return value
    if not isinstance(value, t.Mapping):
        raise BatchInputError(
            f"params must be GenerateParams or a dict of its fields, not a {type(value).__name__}"
        )
    try:
        return GenerateParams.model_validate(dict(value))
    except ValidationError as error:
        raise BatchInputError(f"params: {validation_line(error)}") from None


def table_rows(table: pa.Table) -> list[dict[str, t.Any]]:
    """A table's rows as a template, an id and the params see them: a map column's value
    as a dict (Arrow gives a list of key-value pairs)."""
    return table.to_pylist(maps_as_pydicts="lossy")


def id_text(value: t.Any) -> str:
    """An id column's value as the id's text: as Python writes it, bytes (a binary column)
    as the UTF-8 they hold (a byte that is not UTF-8 as `\\xff`), a list or a struct as
    its JSON."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, t.Mapping | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    return str(value)


def content_id(value: t.Any) -> str:
    """A stable id from a value (a row's `prompt_key`): equal values get equal ids, in any run,
    on any machine."""
    canonical = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _text(value: t.Any, column: str) -> t.Any:
    """A row's value as a template writes it: a list or a struct (a parsed column of an
    earlier pipeline stage, a nested JSON or Parquet value) as its JSON; a value of a binary
    column as the text it holds (a CSV column with a cell that is not UTF-8 is read as
    bytes, its other cells too), `BatchInputError` for a cell that is not UTF-8."""
    if isinstance(value, t.Mapping | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BatchInputError(
            f"column {column!r} is not UTF-8 text in this row (byte {error.start}: "
            f"{value[error.start : error.start + 1]!r})",
            column=column,
        ) from error


def _json_default(value: t.Any) -> t.Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)  # dates, decimals: as Python writes them


def _without_nulls(item: t.Any) -> t.Any:
    # Parquet and Arrow give every struct of a list the union of all keys, absent ones as null.
    if isinstance(item, t.Mapping):
        return {key: value for key, value in item.items() if value is not None}
    return item


SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
"""The roles of ShareGPT's `{"from", "value"}` messages, as OpenAI's."""


def _openai_shaped(item: t.Any) -> t.Any:
    """A ShareGPT message (`{"from": "human", "value": "..."}`, as many datasets hold their
    conversations; other keys, such as a training `weight`, dropped) as an OpenAI one; any
    other item as it is."""
    if not isinstance(item, t.Mapping) or "role" in item or "content" in item:
        return item
    if not {"from", "value"} <= set(item):
        return item
    role = SHAREGPT_ROLES.get(item["from"]) if isinstance(item["from"], str) else None
    return item if role is None else {"role": role, "content": item["value"]}


def _listed(columns: t.Sequence[str]) -> str:
    return ", ".join(columns) if columns else "none"
