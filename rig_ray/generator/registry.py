"""Providers by name: `register_generator`, `get_generator` and `get_identifier`."""

from __future__ import annotations

import functools
import re
import typing as t

from pydantic import TypeAdapter, ValidationError

from rig_ray.errors import InvalidGeneratorError, RigRayError, UnknownProviderError, did_you_mean
from rig_ray.generator.base import Generator
from rig_ray.generator.identifier import decode_value, format_identifier, split_identifier
from rig_ray.generator.litellm_ import LiteLLMGenerator
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.serve_ import ServeGenerator
from rig_ray.generator.transformers_ import TransformersGenerator
from rig_ray.generator.vllm_ import VLLMGenerator

DEFAULT_PROVIDER = "litellm"
"""The provider of an identifier that names none."""

_PROVIDER_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_RESERVED_KEYS = {"model", "params"}

_providers: dict[str, type[Generator]] = {
    "litellm": LiteLLMGenerator,
    "transformers": TransformersGenerator,
    "vllm": VLLMGenerator,
    "serve": ServeGenerator,
}


def register_generator(provider: str, generator_cls: type[Generator]) -> None:
    """Make `provider!<model>,...` identifiers build `generator_cls`.

    Registering a name again replaces the class it builds.
    """
    if not isinstance(provider, str) or not _PROVIDER_NAME.match(provider):
        raise InvalidGeneratorError(
            f"bad provider name {provider!r}: use letters, digits, '_', '.' or '-'"
        )
    if not (isinstance(generator_cls, type) and issubclass(generator_cls, Generator)):
        raise InvalidGeneratorError(
            f"provider {provider!r} must be a Generator subclass, not {generator_cls!r}"
        )
    clashes = set(identifier_fields(generator_cls)) & set(_PARAM_FIELDS)
    if clashes:
        raise InvalidGeneratorError(
            f"{generator_cls.__name__} has fields named like GenerateParams fields "
            f"({', '.join(sorted(clashes))}); rename them so identifiers stay unambiguous"
        )
    _providers[provider] = generator_cls


def registered_providers() -> dict[str, type[Generator]]:
    """A copy of the provider table: name to generator class."""
    return dict(_providers)


def provider_of(generator_cls: type[Generator]) -> str:
    """The most specific registered provider name for a generator class.

    The class's own registration wins, then its nearest registered base class.
    """
    for cls in generator_cls.__mro__:
        names = [name for name, registered in _providers.items() if registered is cls]
        if names:
            return names[-1]
    raise InvalidGeneratorError(
        f"{generator_cls.__name__} has no registered provider; "
        f"call register_generator('<name>', {generator_cls.__name__}) first"
    )


def identifier_fields(generator_cls: type[Generator]) -> dict[str, t.Any]:
    """The generator's own settings that an identifier may set: field name to annotation."""
    return {
        name: field.annotation
        for name, field in generator_cls.model_fields.items()
        if name not in _RESERVED_KEYS
    }


_PARAM_FIELDS = {name: field.annotation for name, field in GenerateParams.model_fields.items()}


def _unknown_key(
    key: str, generator_cls: type[Generator], identifier: str
) -> InvalidGeneratorError:
    known = [*identifier_fields(generator_cls), *_PARAM_FIELDS]
    if key in _RESERVED_KEYS:
        hint = " (the model goes before the first comma)" if key == "model" else ""
        return InvalidGeneratorError(
            f"key {key!r} is reserved{hint}", identifier=identifier, part=key
        )
    hint = did_you_mean(key, known)
    return InvalidGeneratorError(
        f"unknown key {key!r} for {generator_cls.__name__}{hint} (known: {', '.join(known)})",
        identifier=identifier,
        part=key,
    )


@functools.cache
def _adapter(annotation: t.Any) -> TypeAdapter[t.Any]:
    return TypeAdapter(annotation)


def _coerce(key: str, raw: str, annotation: t.Any, identifier: str) -> t.Any:
    value = decode_value(raw, annotation, key=key, identifier=identifier)
    try:
        return _adapter(annotation).validate_python(value)
    except ValidationError as error:
        reason = error.errors()[0]["msg"]
        raise InvalidGeneratorError(
            f"bad value {raw!r} for {key!r}: {reason}", identifier=identifier, part=key
        ) from None


def _lookup_provider(provider: str, identifier: str) -> type[Generator]:
    if provider not in _providers:
        raise UnknownProviderError(provider, identifier=identifier, known=list(_providers))
    return _providers[provider]


def get_generator(identifier: str, *, params: GenerateParams | None = None) -> Generator:
    """Build the generator an identifier names; `params` override the identifier's params.

    Building loads nothing: local engines load on `load()` or on first use.
    """
    split = split_identifier(identifier)
    generator_cls = _lookup_provider(split.provider or DEFAULT_PROVIDER, identifier)
    own_fields = identifier_fields(generator_cls)
    settings: dict[str, t.Any] = {}
    param_values: dict[str, t.Any] = {}
    for key, raw in split.pairs:
        if key in own_fields:
            settings[key] = _coerce(key, raw, own_fields[key], identifier)
        elif key in _PARAM_FIELDS:
            param_values[key] = _coerce(key, raw, _PARAM_FIELDS[key], identifier)
        else:
            raise _unknown_key(key, generator_cls, identifier)
    try:
        base_params = GenerateParams(**param_values)
        return generator_cls(model=split.model, params=base_params.merge_with(params), **settings)
    except ValidationError as error:
        first = error.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else "model"
        raw = dict(split.pairs).get(key, split.model)
        raise InvalidGeneratorError(
            f"bad value {raw!r} for {key!r}: {first['msg']}", identifier=identifier, part=key
        ) from None


def get_identifier(generator: Generator, params: GenerateParams | None = None) -> str:
    """The identifier of a generator (with `params` overlaid); the api_key is never written."""
    generator_cls = type(generator)
    provider = provider_of(generator_cls)
    readable = identifier_fields(_providers[provider])
    dumped = generator.model_dump(mode="json")
    values: dict[str, t.Any] = {}
    for name in identifier_fields(generator_cls):
        field = generator_cls.model_fields[name]
        value = getattr(generator, name)
        if name == "api_key" or (
            not field.is_required() and value == field.get_default(call_default_factory=True)
        ):
            continue
        if name not in readable:
            raise InvalidGeneratorError(
                f"{generator_cls.__name__} sets {name!r}, which provider {provider!r} cannot "
                f"read back; call register_generator('<name>', {generator_cls.__name__}) first"
            )
        values[name] = dumped[name]
    merged = generator.params.merge_with(params).model_dump(mode="json", exclude_none=True)
    if not merged.get("extra"):
        merged.pop("extra", None)
    values.update(merged)
    return format_identifier(provider, generator.model, values)


def identifier_of(generator: Generator) -> str | None:
    """The generator's identifier, or None for a generator that has none (no provider names
    its class)."""
    try:
        return generator.to_identifier()
    except RigRayError:
        return None
