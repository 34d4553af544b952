"""`rig_ray.redaction.redact`: the one function that keeps secrets out of every output."""

from __future__ import annotations

import base64
import json

import pytest

from rig_ray.errors import InvalidGeneratorError, PoolMemberError
from rig_ray.generator.identifier import encode_value
from rig_ray.redaction import MASK, is_secret_key, redact, scrub

SECRET = "sk-TOPSECRET123"


@pytest.mark.parametrize(
    "key",
    ["api_key", "apiKey", "X-Api-Key", "Authorization", "hf_token", "password", "aws_secret",
     "client_secret", "access_key", "private_key", "auth", "Cookie", "session_token"],
)  # fmt: skip
def test_credential_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    ["max_tokens", "min_tokens", "tokenizer", "tokenizer_mode", "skip_special_tokens", "model",
     "api_base", "seed", "kv_cache_dtype", "top_k", "keys", "monkey"],
)  # fmt: skip
def test_ordinary_keys(key: str) -> None:
    assert not is_secret_key(key)


@pytest.mark.parametrize(
    "text",
    [
        f"openai/gpt,api_key={SECRET},temperature=0.5",
        f'openai/gpt,api_key="{SECRET}"',
        f"https://user:{SECRET}@example.com/v1",
        f"openai/m,api_base=http://me:{SECRET}@10.0.0.1:8000/v1,max_tokens=5",
        f"request failed: headers {{'Authorization': 'Bearer {SECRET}', 'Accept': 'x'}}",
        f'{{"hf_token": "{SECRET}", "dtype": "bf16"}}',
        f"Authorization: Bearer {SECRET}",
        f"password={SECRET} and more",
    ],
)
def test_secrets_in_text_are_masked(text: str) -> None:
    cleaned = redact(text)
    assert SECRET not in cleaned
    assert MASK in cleaned


def test_everything_else_in_text_stays() -> None:
    text = "openai/m,api_base=http://me:pw12@host:8000/v1,max_tokens=5,temperature=0.1"
    assert (
        redact(text) == "openai/m,api_base=http://me:***@host:8000/v1,max_tokens=5,temperature=0.1"
    )
    plain = "vllm!/models/llama,gpu_memory_utilization=0.8,stop=a;b"
    assert redact(plain) == plain
    assert redact("http://host:8000/v1") == "http://host:8000/v1"  # a port is no password


def test_base64_json_values_of_identifiers_are_redacted_inside() -> None:
    extra = {"headers": {"X-Api-Key": SECRET, "Accept": "json"}, "top_k": 3}
    identifier = f"vllm!m,extra={encode_value(extra)}"
    cleaned = redact(identifier)
    assert SECRET not in cleaned
    encoded = cleaned.split("extra=base64:", 1)[1]
    decoded = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    assert decoded == {"headers": {"X-Api-Key": MASK, "Accept": "json"}, "top_k": 3}


def test_dicts_and_lists_recursively() -> None:
    value = {
        "api_key": SECRET,
        "api_base": f"https://u:{SECRET}@h/v1",
        "engine_args": {"hf_token": SECRET, "max_model_len": 1024},
        "extra": {"headers": [{"Authorization": f"Bearer {SECRET}"}]},
        "max_tokens": 5,
        "token": None,
    }
    cleaned = redact(value)
    assert SECRET not in json.dumps(cleaned)
    assert cleaned["api_key"] == MASK and cleaned["engine_args"]["max_model_len"] == 1024
    assert cleaned["max_tokens"] == 5 and cleaned["token"] is None
    assert cleaned["api_base"] == "https://u:***@h/v1"
    assert value["api_key"] == SECRET  # the input is left alone


def test_scrub_masks_a_bad_value_quoted_from_an_identifier() -> None:
    identifier = f"openai/m,api_key={SECRET}"
    assert SECRET not in scrub(f"bad value {SECRET!r} for 'x'", identifier)


def test_identifier_errors_repeat_no_secret() -> None:
    from rig_ray.generator import get_generator

    for identifier in (
        f"openai/m,api_key={SECRET},nosuchkey=1",
        f"openai/m,api_base=http://u:{SECRET}@h,top_p=7",
        f"nosuch!m,api_key={SECRET}",
    ):
        with pytest.raises(InvalidGeneratorError) as caught:
            get_generator(identifier)
        assert SECRET not in str(caught.value)
        assert SECRET not in str(caught.value.identifier)
    error = PoolMemberError(f"openai/m,api_key={SECRET}", f"boom with {SECRET}")
    assert SECRET not in str(error) and SECRET not in error.cause


def test_log_records_are_redacted_by_the_filter(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from rig_ray.redaction import RedactingFilter

    logger = logging.getLogger("rig_ray.test_redaction")
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("calling %s with key %s", "https://u:pw1234@h/v1", f"api_key={SECRET}")
    assert SECRET not in caplog.text and "pw1234" not in caplog.text
    assert "https://u:***@h/v1" in caplog.text


def test_batch_input_errors_hide_uri_passwords() -> None:
    from rig_ray.errors import BatchInputError

    error = BatchInputError(
        f"input 's3://key:{SECRET}@bucket/x' does not exist",
        source=f"s3://key:{SECRET}@bucket/x",
    )
    assert SECRET not in str(error) and SECRET not in str(error.source)


@pytest.mark.parametrize(
    ("text", "secrets"),
    [
        (
            "openai/m,api_base=https://proxy.example/v1?code=AZFUNCKEY&api_key=SECRETQ,top_k=2",
            ["AZFUNCKEY", "SECRETQ"],
        ),
        ("https://host/v1?access_token=X123", ["X123"]),
        ("POST https://g.example/v1/m:generateContent?key=AIzaSyAAAA&alt=sse", ["AIzaSyAAAA"]),
        ("https://b.blob.example/c/f?sv=2024&sig=SIGVALUE%2B1&se=x", ["SIGVALUE%2B1"]),
        ("https://h/x?X-Amz-Signature=ABCDEF12&X-Amz-Credential=AKIA%2F1", ["ABCDEF12", "AKIA"]),
        ("https://h/x?token=T0KEN&password=PW99&client_secret=CS77", ["T0KEN", "PW99", "CS77"]),
        ("postgres://user:p@ss@host/db", ["p@ss", "ss@"]),
        ("redis://:a@b@c@host:6379", ["a@b@c"]),
        ("Authorization: Token SECRETTOKEN", ["SECRETTOKEN"]),
        ('curl -H "Authorization: Token ABC123" https://h', ["ABC123"]),
        ("authorization=Digest DIGESTCRED", ["DIGESTCRED"]),
        ("Proxy-Authorization: Negotiate NEGOCRED", ["NEGOCRED"]),
        ('{"detail": "failed with api_key=INNER1 for you"}', ["INNER1"]),
    ],
)
def test_secrets_inside_urls_and_headers(text: str, secrets: list[str]) -> None:
    cleaned = redact(text)
    for secret in secrets:
        assert secret not in cleaned, cleaned
    assert MASK in cleaned


def test_url_redaction_keeps_the_rest() -> None:
    text = "openai/m,api_base=https://h.example/v1?api-version=2024-10&key=K1234,max_tokens=5"
    assert (
        redact(text)
        == "openai/m,api_base=https://h.example/v1?api-version=2024-10&key=***,max_tokens=5"
    )
    assert redact("postgres://user:p@ss@host/db") == "postgres://user:***@host/db"
    assert redact("Authorization: Token SECRETTOKEN") == "Authorization: ***"


def test_scrub_masks_a_bare_api_key() -> None:
    assert SECRET not in scrub(f"provider said: invalid key {SECRET}", {"api_key": SECRET})


def test_identifier_with_url_secrets_is_redacted_in_describe() -> None:
    from rig_ray.cluster.remote_generator import describe
    from rig_ray.generator import get_generator

    generator = get_generator("openai/m,api_base=https://h/v1?code=AZFUNCKEY,api_key=SECRETQ")
    shown = redact(describe(generator))
    assert "AZFUNCKEY" not in shown and "SECRETQ" not in shown


def test_escaped_quotes_of_a_repr_in_a_repr_still_hide_the_value() -> None:
    error = RuntimeError(f"headers {{'Authorization': 'Token {SECRET}'}} \"")
    for text in (repr(error), repr(repr(error)), repr([repr(repr(error))])):
        assert SECRET not in redact(text), text
    assert redact('x {"api_key": "ab\\"cd"}') == 'x {"api_key": "***"}'
    assert redact("password=ab\\cd more") == "password=*** more"


def test_a_url_password_that_reads_as_a_query_does_not_hide_the_real_query() -> None:
    """`p&0=` in the userinfo looks like a parameter whose value runs over `?key=...`."""
    shown = redact("https://user:Zq0&0=@proxy.example/v1?key=Zq1")
    assert "Zq0" not in shown and "Zq1" not in shown
    assert shown == "https://user:***@proxy.example/v1?key=***"
