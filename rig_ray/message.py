"""Chat messages in the shape every generator takes and returns, with parsed structured parts."""

from __future__ import annotations

import string
import typing as t

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_serializer,
    model_validator,
)

from rig_ray.errors import InvalidMessageError, ParseError, TemplateError
from rig_ray.model import Model, class_key, model_class

Role = t.Literal["system", "user", "assistant", "tool"]
"""The speaker of a message, as in the OpenAI chat format."""

MessageLike = t.Union["Message", t.Mapping[str, t.Any], str]
"""Anything that `Message.fit` turns into a message: a Message, an OpenAI-shaped dict, or a str
(taken as a user message)."""

_M = t.TypeVar("_M", bound=Model)

_OPENAI_EMPTY_KEYS = frozenset({"tool_calls", "function_call", "refusal", "audio", "annotations"})
"""Keys of OpenAI response messages that are dropped when empty (a message dumped by the openai
client carries them as None); set, they are refused as unsupported."""


class ParsedMessagePart(BaseModel):
    """A structured model parsed out of a message, and where its block sits in the content."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: Model
    """The parsed model instance."""
    slice_: slice
    """Where the model's XML block sits in the message content."""

    @field_serializer("model")
    def _dump_model(self, model: Model) -> dict[str, t.Any]:
        return {"class": class_key(type(model)), **model.model_dump(mode="json")}

    @field_serializer("slice_")
    def _dump_slice(self, where: slice) -> list[int]:
        return [where.start, where.stop]


class Message(BaseModel):
    """One turn of a conversation.

    `parts` holds the models parsed out of `content`; every parse rewrites each block as the
    model's pretty XML and keeps all slices right. Assigning a new `content` parses the same
    model classes again from the new text.
    """

    model_config = ConfigDict(extra="forbid")

    role: Role
    """Who speaks: system, user, assistant or tool."""
    content: str
    """The text of the turn."""
    name: str | None = None
    """Optional speaker name (OpenAI's `name`)."""
    tool_call_id: str | None = None
    """For tool messages: the call this answers (OpenAI's `tool_call_id`)."""
    metadata: dict[str, t.Any] = Field(default_factory=dict)
    """Free-form data carried with the message, never sent to a generator."""
    parts: list[ParsedMessagePart] = Field(default_factory=list)
    """The parsed models, in the order they appear in `content`."""

    _syncing: bool = PrivateAttr(False)

    @model_validator(mode="before")
    @classmethod
    def _from_openai(cls, value: t.Any) -> t.Any:
        if not isinstance(value, t.Mapping):
            return value
        value = {k: v for k, v in value.items() if not (k in _OPENAI_EMPTY_KEYS and not v)}
        content = value.get("content")
        if content is None and "content" in value:
            value["content"] = ""
        elif isinstance(content, list):
            value["content"] = _join_text_parts(content)
        if "parts" in value:
            value["parts"] = _restore_parts(value["parts"], value.get("content"))
        return value

    def __setattr__(self, name: str, value: t.Any) -> None:
        super().__setattr__(name, value)
        if name == "content" and self.parts and not self._syncing:
            classes = list(dict.fromkeys(type(part.model) for part in self.parts))
            self.parts = []
            for cls in classes:
                self._parse_all(cls)

    # -- reading -------------------------------------------------------------------------------

    @classmethod
    def fit(cls, value: MessageLike) -> Message:
        """Read a Message, an OpenAI-shaped dict, or a plain str (a user turn)."""
        if isinstance(value, Message):
            return value
        if isinstance(value, str):
            return cls(role="user", content=value)
        if isinstance(value, t.Mapping):
            try:
                return cls.model_validate(dict(value))
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "message"
                raise InvalidMessageError(value, f"{where}: {first['msg']}") from None
        raise InvalidMessageError(
            value, f"expected Message, dict or str, got {type(value).__name__}"
        )

    @classmethod
    def fit_many(cls, values: MessageLike | t.Sequence[MessageLike]) -> list[Message]:
        """Read one message-like value or a sequence of them as a list of Messages."""
        if isinstance(values, str | Message | t.Mapping):
            return [cls.fit(values)]
        if not isinstance(values, t.Sequence):
            raise InvalidMessageError(values, "expected a message or a sequence of messages")
        return [cls.fit(value) for value in values]

    def to_openai(self) -> dict[str, str]:
        """The message as the OpenAI chat API takes it."""
        out = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out

    def apply(
        self,
        values: t.Mapping[str, t.Any] | None = None,
        /,
        *,
        strict: bool = False,
        **kwargs: t.Any,
    ) -> Message:
        """A copy with `$name` (or `${any name}`) fields of the content filled from `values`
        and keyword args.

        Uses `string.Template.safe_substitute` (`FieldTemplate`): fields with no value stay
        as they are, unless `strict` (see `fill_templates`).
        """
        (content,) = fill_templates([self.content], {**(values or {}), **kwargs}, strict=strict)
        return self.model_copy(update={"content": content, "parts": []}, deep=True)

    @property
    def models(self) -> list[Model]:
        """The parsed models, in content order."""
        return [part.model for part in self.parts]

    # -- parsing -------------------------------------------------------------------------------

    def parse(self, model: type[_M]) -> _M:
        """The first block of `model` that validates; `ParseError` if there is none."""
        return self.parse_set(model, minimum=1)[0]

    def try_parse(self, model: type[_M]) -> _M | None:
        """`parse`, but None where the model is missing or invalid."""
        found = self.try_parse_set(model)
        return found[0] if found else None

    def parse_set(self, model: type[_M], *, minimum: int = 1) -> list[_M]:
        """Every valid block of `model`; `ParseError` if fewer than `minimum`."""
        found, problem = self._parse_all(model)
        if len(found) < minimum:
            raise problem or ParseError(
                f"expected at least {minimum} <{model.tag()}> block(s), found {len(found)}",
                model=model.__name__,
            )
        return found

    def try_parse_set(self, model: type[_M]) -> list[_M]:
        """Every valid block of `model` (possibly none)."""
        return self._parse_all(model)[0]

    def parse_many(self, *models: type[Model]) -> list[Model]:
        """Every valid block of each of `models`, in content order; each must appear once."""
        for model in models:
            self.parse_set(model)
        return [part.model for part in self.parts if isinstance(part.model, models)]

    def try_parse_many(self, *models: type[Model]) -> list[Model]:
        """Every valid block of any of `models`, in content order (possibly none)."""
        for model in models:
            self._parse_all(model)
        return [part.model for part in self.parts if isinstance(part.model, models)]

    def strip(self, model: type[Model]) -> list[ParsedMessagePart]:
        """Remove the parsed blocks of `model` from the content; returns the removed parts."""
        removed = [part for part in self.parts if isinstance(part.model, model)]
        content = self.content
        kept = [part for part in self.parts if not isinstance(part.model, model)]
        for part in sorted(removed, key=lambda p: p.slice_.start, reverse=True):
            start, stop = part.slice_.start, part.slice_.stop
            content = content[:start] + content[stop:]
            kept = [_shifted(p, stop, start - stop) for p in kept]
        self._set_synced(content, kept)
        return removed

    def _parse_all(self, model: type[_M]) -> tuple[list[_M], ParseError | None]:
        """Parse every block of `model`, re-sync content and slices; the models and the first
        problem (missing or invalid block), if any."""
        scanned = model.scan(self.content)
        content, parts = self.content, list(self.parts)
        for found, where in reversed(scanned):
            if isinstance(found, ParseError):
                continue
            pretty = found.to_pretty_xml()
            content = content[: where.start] + pretty + content[where.stop :]
            delta = len(pretty) - (where.stop - where.start)
            parts = [_shifted(p, where.stop, delta) for p in parts if not _overlaps(p, where)]
            parts.append(
                ParsedMessagePart(model=found, slice_=slice(where.start, where.start + len(pretty)))
            )
        self._set_synced(content, parts)
        valid = [found for found, _ in scanned if not isinstance(found, ParseError)]
        errors = [found for found, _ in scanned if isinstance(found, ParseError)]
        if errors:
            return valid, errors[0]
        if not valid:
            hint = f"no <{model.tag()}> block found; write it as {model.xml_example()}"
            return valid, ParseError(hint, model=model.__name__)
        return valid, None

    def _set_synced(self, content: str, parts: list[ParsedMessagePart]) -> None:
        self._syncing = True
        try:
            self.content = content
            self.parts = sorted(parts, key=lambda p: p.slice_.start)
        finally:
            self._syncing = False


class FieldTemplate(string.Template):
    """`string.Template` whose braces take any name without `{` or `}`: `${Question Text}`
    is the field `Question Text`, as a column may be named; `$name` stays a name of letters,
    digits and `_` (ended by the first other character), and `$$` a literal `$`."""

    braceidpattern = r"[^{}]+"


def fill_templates(
    texts: t.Sequence[str], values: t.Mapping[str, t.Any], *, strict: bool = False
) -> list[str]:
    """Fill the `$name` / `${any name}` fields of each text from `values` (`FieldTemplate`,
    `string.Template.safe_substitute`).

    With `strict`, a field that no value is given for, or a value that no text has a field for,
    raises `TemplateError` naming them all.
    """
    if strict:
        fields = [name for text in texts for name in template_fields(text)]
        missing = [name for name in dict.fromkeys(fields) if name not in values]
        unused = [name for name in values if name not in fields]
        if missing or unused:
            raise TemplateError(missing, unused)
    return [FieldTemplate(text).safe_substitute(values) for text in texts]


def template_fields(text: str) -> list[str]:
    """The `$name` / `${any name}` fields a template string refers to, in order, once each."""
    return list(dict.fromkeys(FieldTemplate(text).get_identifiers()))


def _shifted(part: ParsedMessagePart, after: int, delta: int) -> ParsedMessagePart:
    if delta == 0 or part.slice_.start < after:
        return part
    moved = slice(part.slice_.start + delta, part.slice_.stop + delta)
    return ParsedMessagePart(model=part.model, slice_=moved)


def _overlaps(part: ParsedMessagePart, where: slice) -> bool:
    return part.slice_.start < where.stop and where.start < part.slice_.stop


def _join_text_parts(content: list[t.Any]) -> str:
    """OpenAI content parts -> text; only text parts are supported."""
    texts = []
    for item in content:
        if not (isinstance(item, t.Mapping) and item.get("type") == "text"):
            kind = item.get("type") if isinstance(item, t.Mapping) else type(item).__name__
            raise ValueError(f"only text content parts are supported, got {kind!r}")
        texts.append(str(item.get("text", "")))
    return "".join(texts)


def _restore_parts(parts: t.Any, content: t.Any) -> t.Any:
    """Parts from JSON ({model: {class, ...}, slice_: [start, stop]}) become parsed models again
    where their class is defined in this process; others are dropped (the text stays)."""
    if not isinstance(parts, list) or not isinstance(content, str):
        return parts
    restored: list[t.Any] = []
    for part in parts:
        if isinstance(part, ParsedMessagePart) or not isinstance(part, t.Mapping):
            restored.append(part)
            continue
        dumped, where = dict(part.get("model") or {}), part.get("slice_")
        cls = model_class(str(dumped.pop("class", "")))
        if cls is None or not isinstance(where, list | tuple) or len(where) != 2:
            continue
        found = cls.from_text(content[where[0] : where[1]])
        if found:
            restored.append(ParsedMessagePart(model=found[0][0], slice_=slice(*where)))
    return restored
