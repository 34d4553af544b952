"""Structured parts of messages: pydantic models that read and write themselves as XML blocks.

A `Model` subclass is a pydantic-xml model whose tag is its class name in kebab-case (`class
FinalAnswer(Model)` reads `<final-answer>...</final-answer>`) unless `tag=` is given. A model
with no child elements ("text-only") takes the block's inner text as it is, so `a < b & c` need
no escaping; its text is stripped of surrounding whitespace.
"""

from __future__ import annotations

import functools
import html
import re
import typing as t
import xml.dom.minidom
from xml.etree.ElementTree import ParseError as XMLSyntaxError
from xml.sax.saxutils import escape

from pydantic import ValidationError
from pydantic_xml import BaseXmlModel
from pydantic_xml.errors import BaseError as PydanticXmlError

from rig_ray.errors import ParseError

_REGISTRY: dict[str, type[Model]] = {}
"""Every Model subclass by `module:qualname`, so parsed parts can be rebuilt from JSON."""


def kebab_case(name: str) -> str:
    """`FinalAnswer` -> `final-answer`, `XMLBlock` -> `xml-block`."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name).lower()


class Model(BaseXmlModel):
    """A pydantic model that lives inside message text as an XML-tagged block."""

    def __init_subclass__(cls, tag: str | None = None, **kwargs: t.Any) -> None:
        super().__init_subclass__(tag=tag or kebab_case(cls.__name__), **kwargs)
        _REGISTRY[class_key(cls)] = cls

    @classmethod
    def tag(cls) -> str:
        """The XML tag this model reads and writes."""
        return t.cast(str, cls.__xml_tag__)

    @classmethod
    def xml_tags(cls) -> str:
        """An empty block, `<tag></tag>`: handy in prompts."""
        return f"<{cls.tag()}></{cls.tag()}>"

    @classmethod
    def xml_example(cls) -> str:
        """What a block should look like, for prompts; override for richer examples."""
        return cls.xml_tags()

    def to_pretty_xml(self) -> str:
        """The block as it is written back into a message: indented, no XML declaration."""
        raw = self.to_xml(skip_empty=True)
        text = raw.decode() if isinstance(raw, bytes) else raw
        if _text_field(type(self)) is not None:
            return _text_block(self, text)
        pretty = xml.dom.minidom.parseString(text).toprettyxml(indent="  ")
        pretty = pretty.split("?>", 1)[-1].strip()
        if pretty.endswith("/>"):  # no children: `<tag/>` would not be read back
            pretty = f"{pretty[:-2].rstrip()}></{self.tag()}>"
        return pretty

    @classmethod
    def from_text(cls, text: str) -> list[tuple[t.Self, slice]]:
        """Every block of this model in `text` that validates, with where it sits."""
        return [(m, s) for m, s in cls.scan(text) if isinstance(m, cls)]

    @classmethod
    def scan(cls, text: str) -> list[tuple[t.Self | ParseError, slice]]:
        """Every block of this model's tag in `text`: the model, or why it did not validate."""
        found: list[tuple[t.Self | ParseError, slice]] = []
        for block, attrs, inner, where in _blocks(cls.tag(), text):
            try:
                found.append((cls._from_block(block, attrs, inner), where))
            except (ValidationError, XMLSyntaxError, ValueError, PydanticXmlError) as error:
                found.append((ParseError(_describe(cls, error), model=cls.__name__), where))
        return found

    @classmethod
    def _from_block(cls, block: str, attrs: str, inner: str) -> t.Self:
        field = _text_field(cls)
        if field is None:
            return cls.from_xml(_escape_stray_ampersands(block))
        text = html.unescape(inner).strip()
        return cls.from_xml(f"<{cls.tag()}{attrs}>{escape(text)}</{cls.tag()}>")


def class_key(cls: type) -> str:
    """`module:qualname`: how parsed parts name their model class in JSON."""
    return f"{cls.__module__}:{cls.__qualname__}"


def model_class(key: str) -> type[Model] | None:
    """The Model subclass named by `class_key`, if it has been defined in this process."""
    return _REGISTRY.get(key)


@functools.cache
def _tag_patterns(tag: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The opening and closing tag patterns of `tag`."""
    name = re.escape(tag)
    return re.compile(rf"<{name}(?P<attrs>\s[^<>]*)?>"), re.compile(rf"</{name}\s*>")


def _blocks(tag: str, text: str) -> t.Iterator[tuple[str, str, str, slice]]:
    """Each `<tag attrs>inner</tag>` in `text`, in order: (block, attrs, inner, where).

    Linear in `text`: a model that writes a thousand openings and no closing tag must not
    make every opening scan the rest of the text.
    """
    opening, closing = _tag_patterns(tag)
    position = 0
    while (start := opening.search(text, position)) is not None:
        end = closing.search(text, start.end())
        if end is None:
            return  # no later opening can be closed either
        where = slice(start.start(), end.end())
        yield text[where], start.group("attrs") or "", text[start.end() : end.start()], where
        position = end.end()


@functools.cache
def _text_field(cls: type[Model]) -> str | None:
    """The field that holds a text-only model's inner text (None for models with elements);
    worked out once per class."""
    serializers = getattr(cls.__xml_serializer__, "_field_serializers", {})
    kinds = {name: type(child).__name__ for name, child in serializers.items()}
    texts = [name for name, kind in kinds.items() if kind == "TextSerializer"]
    others = [
        kind for kind in kinds.values() if kind not in ("TextSerializer", "AttributeSerializer")
    ]
    return texts[0] if len(texts) == 1 and not others else None


def _text_block(model: Model, raw: str) -> str:
    """`<tag attrs>text</tag>`, the text written as is (unescaped), on its own lines when it
    has several: the text of the model's XML serialization `raw`, so that every value reads
    back as it was written (`0`, `false`; none for an unset or empty one)."""
    opening = raw.split(">", 1)[0].removesuffix("/").rstrip() + ">"
    empty = raw.rstrip().endswith("/>")
    text = "" if empty else html.unescape(raw[len(opening) : raw.rindex("</")])
    closing = f"</{type(model).tag()}>"
    return f"{opening}\n{text}\n{closing}" if "\n" in text else f"{opening}{text}{closing}"


_STRAY_AMPERSAND = re.compile(r"&(?!(?:[a-zA-Z]+|#\d+|#x[0-9a-fA-F]+);)")


def _escape_stray_ampersands(block: str) -> str:
    return _STRAY_AMPERSAND.sub("&amp;", block)


_LINE = re.compile(r"^\[line -?\d+\]: ")


def _describe(cls: type[Model], error: Exception) -> str:
    if isinstance(error, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {_LINE.sub('', e['msg'])}"
            for e in error.errors()
        )
        return f"<{cls.tag()}> is not a valid {cls.__name__} ({problems})"
    return f"<{cls.tag()}> is not well-formed XML ({error})"
