"""Property tests of `redact` / `scrub`: random secrets, in every place text, identifiers,
dicts, log records and errors can hold them, never come out."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig_ray.cluster.remote_generator import describe
from rig_ray.errors import GenerationError
from rig_ray.generator import get_generator
from rig_ray.redaction import RedactingFilter, error_text, redact, scrub, scrubbed_error
from tests.fakes import FAKE_PROVIDERS
from tests.secret_strategies import (
    KEY_CHARS,
    Placed,
    free_text,
    generator_identifiers,
    header_names,
    header_value,
    leaks,
    placed_in_text,
    schemes,
    secret,
)

FAST = settings(max_examples=150, deadline=None)
MORE = settings(max_examples=5000, deadline=None)


def _check_text(placed: Placed) -> None:
    cleaned = redact(placed.text)
    assert not leaks(placed.secret, cleaned, placed.text), (placed.where, cleaned)
    assert cleaned != placed.text
    assert redact(cleaned) == cleaned  # idempotent: a masked text is left as it is


@FAST
@given(placed_in_text())
def test_no_secret_survives_redact(placed: Placed) -> None:
    _check_text(placed)


@pytest.mark.slow
@MORE
@given(placed_in_text())
def test_no_secret_survives_redact_explored(placed: Placed) -> None:
    _check_text(placed)


@FAST
@given(placed_in_text())
def test_no_secret_in_a_log_record_or_its_traceback(placed: Placed) -> None:
    def fail() -> None:
        raise GenerationError(f"call failed: {placed.text}")

    with pytest.raises(GenerationError) as caught:
        fail()
    error = caught.value
    record = logging.LogRecord(
        "ray.serve", logging.ERROR, __file__, 1, "failed: %r", (error,), exc_info=None
    )
    record.exc_info = (type(error), error, error.__traceback__)
    RedactingFilter().filter(record)
    shown = logging.Formatter().format(record)
    assert placed.secret not in shown and "GenerationError" in shown
    assert placed.secret not in error_text(error, with_traceback=True)


@FAST
@given(
    name=header_names,
    scheme=schemes,
    value=secret(),
    key=st.sampled_from(["api_key", "hf_token", "password", "client_secret", "token"]),
    other=free_text,
)
def test_no_secret_in_dicts_of_extra_and_engine_args(
    name: str, scheme: str, value: str, key: str, other: str
) -> None:
    nested = {
        "extra": {"headers": {name: header_value(name, scheme, value)}, "note": other},
        "engine_args": {key: value, "max_model_len": 64},
        "api_base": f"https://h.example/v1?key={value}",
        "list": [f"{name}: {header_value(name, scheme, value)}"],
    }
    assert value not in json.dumps(redact(nested))
    assert value not in redact(repr(nested))
    assert value not in redact(json.dumps(nested))


@FAST
@given(generator_identifiers(), free_text)
def test_a_provider_error_quoting_the_generators_secrets_is_scrubbed(
    secrets: object, words: str
) -> None:
    from rig_ray.generator import registry

    saved = dict(registry._providers)
    registry.register_generator("leaky", FAKE_PROVIDERS["leaky"])
    try:
        generator = get_generator(secrets.identifier)  # type: ignore[attr-defined]
    finally:
        registry._providers.clear()
        registry._providers.update(saved)
    quoted = generator.confession()  # type: ignore[attr-defined]
    bare = " ".join(secrets.secrets)  # type: ignore[attr-defined]
    error = GenerationError(f"{words} {quoted} {bare}")
    shown = [
        redact(describe(generator)),
        redact(secrets.identifier),  # type: ignore[attr-defined]
        scrub(str(error), generator),
        error_text(error, generator, with_traceback=True),
        str(scrubbed_error(error, generator)),
    ]
    for value in secrets.secrets:  # type: ignore[attr-defined]
        for text in shown[2:]:
            assert value not in text, text
        for text in shown[:2]:  # identifiers: everything but the api_key, which has a name
            assert value not in text, text


@FAST
@given(st.text(alphabet=KEY_CHARS + " ,:=", max_size=40))
def test_text_without_credential_names_is_left_alone(text: str) -> None:
    plain = f"vllm!m,temperature=0.5,max_tokens=7,stop=a;b {text.replace('=', ' ')}"
    if not any(word in plain.lower() for word in ("key", "token", "secret", "auth", "bearer",
                                                  "basic", "pass", "pwd", "sig", "cookie",
                                                  "credential", "code")):  # fmt: skip
        assert redact(plain) == plain


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(placed_in_text())
def test_scrubbed_errors_keep_their_type_when_they_can(placed: Placed) -> None:
    error = scrubbed_error(ValueError(placed.text), {})
    assert isinstance(error, ValueError) and placed.secret not in str(error)
