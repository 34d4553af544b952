"""JSON-schema decoding (`GenerateParams.json_schema`): what each engine is given for it.

vLLM constrains decoding to the schema (its structured-outputs parameters), LiteLLM sends it as
an OpenAI `response_format`, and a generator that cannot honour it refuses with
`UnsupportedParamsError`. The schema `{"type": "object"}` alone means "any JSON object"
(OpenAI's `json_object` mode).
"""

from __future__ import annotations

import typing as t

from rig_ray.errors import UnsupportedParamsError

JSON_OBJECT: dict[str, t.Any] = {"type": "object"}
"""The schema of any JSON object: OpenAI's `{"type": "json_object"}` response format."""


def schema_dict(value: t.Any) -> dict[str, t.Any]:
    """A JSON schema as a dict: a dict as it is, or a pydantic model class's JSON schema."""
    if isinstance(value, dict):
        return value
    schema_of = getattr(value, "model_json_schema", None)
    if isinstance(value, type) and callable(schema_of):
        return t.cast(dict[str, t.Any], schema_of())
    raise ValueError(
        f"a JSON schema is a dict or a pydantic model class, not {type(value).__name__}"
    )


def honours_json_schema(generator: t.Any) -> bool:
    """Whether a generator (or a remote handle of one) can constrain replies to a schema."""
    inner = getattr(generator, "inner", generator)
    return bool(getattr(type(inner), "honours_json_schema", False))


def refuse_json_schema(generator: t.Any) -> UnsupportedParamsError:
    """The error of a generator asked for json_schema that it cannot honour."""
    inner = getattr(generator, "inner", generator)
    name = type(inner).__name__
    return UnsupportedParamsError(
        f"{name} (model {inner.model!r}) cannot constrain replies to a JSON schema; "
        "use a vllm! or litellm! generator for json_schema / response_format",
        generator=name,
        param="json_schema",
    )


def vllm_sampling_kwargs(values: dict[str, t.Any]) -> dict[str, t.Any]:
    """SamplingParams keyword arguments, with `json_schema` turned into vLLM's structured
    outputs (`guided_decoding` on vLLM releases before structured outputs)."""
    schema = values.pop("json_schema", None)
    if schema is None:
        return values
    from vllm import sampling_params

    structured = getattr(sampling_params, "StructuredOutputsParams", None)
    if structured is not None:
        constraint = (
            structured(json_object=True) if schema == JSON_OBJECT else structured(json=schema)
        )
        return {**values, "structured_outputs": constraint}
    guided = sampling_params.GuidedDecodingParams  # type: ignore[attr-defined]
    constraint = guided(json_object=True) if schema == JSON_OBJECT else guided(json=schema)
    return {**values, "guided_decoding": constraint}


def response_format(schema: dict[str, t.Any]) -> dict[str, t.Any]:
    """The OpenAI `response_format` of a schema, as LiteLLM passes it to providers."""
    if schema == JSON_OBJECT:
        return {"type": "json_object"}
    name = str(schema.get("title") or "reply")
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def litellm_request_kwargs(values: dict[str, t.Any]) -> dict[str, t.Any]:
    """LiteLLM request keyword arguments, with `json_schema` as `response_format`."""
    schema = values.pop("json_schema", None)
    return values if schema is None else {**values, "response_format": response_format(schema)}
