"""The identifier grammar: `[<provider>!]<model>[,<key>=<value>]*`.

Splitting:
- pairs are separated by commas outside double quotes; only the first `=` of a pair splits;
- `!` separates the provider only in the part before the first comma.

Values:
- a bare value is the text itself, stripped of surrounding spaces;
- a double-quoted value is a JSON string (`"a,b"`, `"say \\"hi\\""`), so it can hold `,` `;` `=`;
- `base64:<urlsafe base64 of JSON>` holds any JSON value (used for dicts such as `extra`);
- for list fields, `;` separates items (`stop=a;b`); each item may be quoted.

Decoded values are then coerced by the pydantic type of the field they set.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import types
import typing as t

from rig_ray.errors import InvalidGeneratorError

BASE64_PREFIX = "base64:"
_SPECIAL = set(',;"\\')


@dataclasses.dataclass(frozen=True)
class SplitIdentifier:
    """An identifier cut into its parts, values still in their written form."""

    provider: str | None
    model: str
    pairs: list[tuple[str, str]]


def _split_outside_quotes(text: str, separator: str, identifier: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    in_quotes = escaped = False
    for char in text:
        if in_quotes:
            current.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_quotes = False
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            in_quotes = char == '"'
            current.append(char)
    if in_quotes:
        raise InvalidGeneratorError(
            "unterminated double quote", identifier=identifier, part="".join(current)
        )
    parts.append("".join(current))
    return parts


def split_identifier(identifier: str) -> SplitIdentifier:
    """Cut an identifier into provider, model and raw key/value pairs."""
    if not isinstance(identifier, str):
        raise InvalidGeneratorError(f"an identifier is a str, not {type(identifier).__name__}")
    if not identifier.strip():
        raise InvalidGeneratorError("empty identifier", identifier=identifier)
    head, *rest = _split_outside_quotes(identifier.strip(), ",", identifier)
    provider: str | None = None
    if "!" in head and not head.startswith('"'):
        provider, head = (part.strip() for part in head.split("!", 1))
        if not provider:
            raise InvalidGeneratorError(
                "empty provider before '!'", identifier=identifier, part="!"
            )
    model = _unquote(head.strip(), identifier, "model")
    if not model:
        raise InvalidGeneratorError("no model given", identifier=identifier, part=head)
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for pair in rest:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidGeneratorError(
                f"malformed pair {pair!r} (expected key=value)", identifier=identifier, part=pair
            )
        if key in seen:
            raise InvalidGeneratorError(f"key {key!r} given twice", identifier=identifier, part=key)
        seen.add(key)
        pairs.append((key, value.strip()))
    return SplitIdentifier(provider=provider, model=model, pairs=pairs)


def _unquote(text: str, identifier: str, key: str) -> str:
    if not text.startswith('"'):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, str):
        raise InvalidGeneratorError(
            f"bad quoted value {text!r} for {key!r} (quote it as a JSON string)",
            identifier=identifier,
            part=key,
        )
    return value


def _shape(annotation: t.Any) -> str:
    """'list', 'dict' or 'scalar': how a field's written value is decoded."""
    origin = t.get_origin(annotation)
    if origin in (t.Union, types.UnionType):
        shapes = {_shape(arg) for arg in t.get_args(annotation) if arg is not type(None)}
        return shapes.pop() if len(shapes) == 1 else "scalar"
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple, set):
        return "list"
    if origin is dict or annotation is dict:
        return "dict"
    return "scalar"


def decode_value(raw: str, annotation: t.Any, *, key: str, identifier: str) -> t.Any:
    """Turn a written value into the Python value for a field of type `annotation`."""
    if raw.startswith(BASE64_PREFIX):
        encoded = raw[len(BASE64_PREFIX) :]
        try:
            padded = encoded + "=" * (-len(encoded) % 4)
            return json.loads(base64.urlsafe_b64decode(padded.encode()))
        except (binascii.Error, ValueError) as error:
            raise InvalidGeneratorError(
                f"bad base64 JSON value for {key!r}: {error}", identifier=identifier, part=key
            ) from None
    shape = _shape(annotation)
    if shape == "list":
        return [
            _unquote(item.strip(), identifier, key)
            for item in _split_outside_quotes(raw, ";", identifier)
        ]
    text = _unquote(raw, identifier, key)
    if shape == "dict":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise InvalidGeneratorError(
                f"value for {key!r} must be a JSON object, quoted or as base64:<json>",
                identifier=identifier,
                part=key,
            ) from None
    return text


def _encode_text(text: str) -> str:
    bare_ok = (
        text
        and text == text.strip()
        and not _SPECIAL.intersection(text)
        and not text.startswith(BASE64_PREFIX)
    )
    return text if bare_ok else json.dumps(text)


def encode_value(value: t.Any) -> str:
    """Write a field value so that `decode_value` gives it back."""
    if isinstance(value, bool | int | float):
        return str(value)
    if isinstance(value, str):
        return _encode_text(value)
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return ";".join(_encode_text(v) for v in value)
    payload = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return BASE64_PREFIX + base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def format_identifier(provider: str, model: str, values: dict[str, t.Any]) -> str:
    """Write `provider!model,key=value,...`."""
    head = f"{provider}!{_encode_text(model)}"
    pairs = [f"{key}={encode_value(value)}" for key, value in values.items()]
    return ",".join([head, *pairs])
