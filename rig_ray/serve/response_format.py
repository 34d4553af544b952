"""`response_format` of chat requests: `{"type": "json_object"}` and `{"type": "json_schema",
"json_schema": {"name", "schema", "strict"}}` become `GenerateParams.json_schema`, which only
generators that can constrain decoding (vLLM, LiteLLM) take; others answer 400."""

from __future__ import annotations

import typing as t

from rig_ray.errors import ServeRequestError
from rig_ray.generator.base import Generator
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.structured import JSON_OBJECT, honours_json_schema

_KINDS = ("text", "json_object", "json_schema")


def schema_of(response_format: t.Mapping[str, t.Any] | None) -> dict[str, t.Any] | None:
    """The JSON schema a request's `response_format` asks for (None: plain text).

    A malformed one raises ValueError whose message starts with the field at fault.
    """
    if response_format is None:
        return None
    kind = response_format.get("type", "text")
    if kind not in _KINDS:
        raise ValueError(f"response_format.type: must be one of {', '.join(_KINDS)}, not {kind!r}")
    if kind == "text":
        return None
    if kind == "json_object":
        return dict(JSON_OBJECT)
    spec = response_format.get("json_schema")
    if not isinstance(spec, t.Mapping):
        raise ValueError("response_format.json_schema: an object with name and schema is required")
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("response_format.json_schema.name: a non-empty string is required")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise ValueError("response_format.json_schema.strict: must be true or false")
    schema = spec.get("schema", JSON_OBJECT)
    if not isinstance(schema, t.Mapping):
        raise ValueError("response_format.json_schema.schema: must be a JSON schema object")
    return dict(schema)


def refusal(generator: Generator, params: GenerateParams, name: str) -> ServeRequestError | None:
    """The 400 for a request whose response_format `generator` cannot honour (None: it can)."""
    if params.json_schema is None or honours_json_schema(generator):
        return None
    return ServeRequestError(
        f"response_format: model {name!r} ({type(generator).__name__}) cannot constrain "
        "replies to JSON; send response_format only to vLLM or LiteLLM models",
        code="unsupported_parameter",
        param="response_format",
    )
