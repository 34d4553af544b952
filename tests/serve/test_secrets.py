"""Secrets through a running endpoint: a generator whose errors quote every secret it holds,
and clients that send random keys. None may reach a response body or Serve's logs."""

from __future__ import annotations

import logging
import typing as t
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig_ray.redaction import RedactingFilter
from rig_ray.serve import http_errors
from tests.fakes import LeakyGenerator
from tests.secret_strategies import KEY_CHARS, free_text, leaks, secret
from tests.serve.conftest import FAKE_CPU
from tests.serve.support import KEY, TIMEOUT, Endpoint, chat_body

PREFIX = "/secrets"
API_KEY = "sk-bare-Zq7mQ2vX9rT4"
PASSWORD = "Zqp@ss:w@rd!x"
QUERY = "ZqSig%2Bvalue/9="
HEADER = "ZqHeaderCred+/="
SECRETS = (API_KEY, PASSWORD, QUERY, HEADER)


def _leaky() -> LeakyGenerator:
    from rig_ray.generator.params import GenerateParams

    params = GenerateParams(
        api_base=f"https://user:{PASSWORD}@proxy.example/v1?sig={QUERY}",
        extra={"headers": {"Authorization": f"Token {HEADER}"}},
    )
    return LeakyGenerator(model="leaky", api_key=API_KEY, params=params, chatty=False)


@pytest.fixture(scope="module")
def leaky_endpoint(local_serve: int) -> t.Iterator[Endpoint]:
    from ray import serve

    from rig_ray.serve import ServedModel, build_app

    app = build_app([ServedModel(generator=_leaky(), ray_actor_options=FAKE_CPU)], api_key=KEY)
    serve.run(app, name="secrets", route_prefix=PREFIX)
    try:
        yield Endpoint(local_serve, PREFIX)
    finally:
        serve.delete("secrets")


def _serve_logs() -> str:
    from ray._private import worker

    folder = Path(worker._global_node.get_logs_dir_path()) / "serve"
    return "\n".join(path.read_text(errors="replace") for path in folder.glob("*.log"))


def _check(shown: str, *values: str, sent: str = "") -> None:
    """No secret of `values` in `shown`; pieces of them that the request's own `sent` text
    holds (echoed back by the model) do not count."""
    for value in values:
        assert not leaks(value, shown, source=sent, piece=6), (value, shown[-3000:])


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(words=free_text, client_key=secret(KEY_CHARS), stream=st.booleans())
def test_no_secret_in_response_bodies_or_serve_logs(
    leaky_endpoint: Endpoint, words: str, client_key: str, stream: bool
) -> None:
    body = chat_body(f"{words} FAIL", model="leaky", stream=stream)
    with leaky_endpoint.client() as client:
        failed = client.post("/v1/chat/completions", json=body)
        ok = client.post("/v1/chat/completions", json=chat_body(words or "hi", model="leaky"))
    assert failed.status_code in (200, 422), failed.text  # a stream fails in its events
    assert "request id" in failed.text and ok.status_code == 200, ok.text
    with httpx.Client(base_url=leaky_endpoint.url, timeout=TIMEOUT) as stranger:
        refused = stranger.post(
            "/v1/chat/completions",
            json=chat_body("hi", model="leaky"),
            headers={"Authorization": f"Bearer {client_key}"},
        )
    assert refused.status_code == 401
    _check(failed.text + ok.text + refused.text, *SECRETS, client_key, sent=words)
    _check(_serve_logs(), *SECRETS, client_key, sent=words)


def test_a_failed_item_is_logged_in_full_but_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    generator = _leaky()
    error = RuntimeError(generator.confession())
    mapped = http_errors.item_error(error, request_id="rid-9", model="m", secrets=[generator])
    assert mapped.status_code == 422
    [logged] = [r for r in caplog.records if "rid-9" in r.getMessage()]
    text = logged.getMessage() + (
        logging.Formatter().formatException(logged.exc_info) if logged.exc_info else ""
    )
    assert "RuntimeError" in text and "invalid api key ***" in text
    _check(text, *SECRETS)


def test_an_unexpected_failure_is_logged_redacted(caplog: pytest.LogCaptureFixture) -> None:
    error = KeyError(
        f"upstream https://h.example/v1?key={QUERY} said Authorization: Token {HEADER}"
    )
    http_errors.from_failure(error, request_id="rid-10")
    [logged] = [r for r in caplog.records if "rid-10" in r.getMessage()]
    text = logged.getMessage() + (
        logging.Formatter().formatException(logged.exc_info) if logged.exc_info else ""
    )
    _check(text, QUERY, HEADER)


def test_a_failed_replicas_message_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from ray import serve

    from rig_ray.serve import APP_NAME, ServedModel
    from rig_ray.serve import cli as serve_cli

    message = f"Traceback ...\nRuntimeError: {_leaky().confession()}"
    deployment = SimpleNamespace(status="DEPLOY_FAILED", message=message)
    app = SimpleNamespace(deployments={"leaky": deployment})
    monkeypatch.setattr(serve, "status", lambda: SimpleNamespace(applications={APP_NAME: app}))
    why = serve_cli._deploy_failure([ServedModel(generator=_leaky())])
    assert why is not None and "failed to start" in why and "invalid api key ***" in why
    _check(why, *SECRETS)


def test_the_redacting_filter_folds_a_scrubbed_traceback_in() -> None:
    generator = _leaky()
    try:
        raise RuntimeError(generator.confession())
    except RuntimeError as error:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "%s", ("boom",), None)
        record.exc_info = (type(error), error, error.__traceback__)
    RedactingFilter(generator).filter(record)
    shown = logging.Formatter().format(record)
    assert "Traceback" in shown and "boom" in shown
    _check(shown, *SECRETS)
