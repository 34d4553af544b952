"""Serve fixtures: one local Ray + Serve for the tests/serve package, and the test app on it."""

from __future__ import annotations

import os
import typing as t
from pathlib import Path

import pytest

from tests.conftest import _shared, shared_ray
from tests.openai_stub import OpenAIStub
from tests.serve.support import GUARD, KEY, MAX_STOP, SMOL, Endpoint, free_port

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

FAKE_CPU = {"num_cpus": 0.1}


@pytest.fixture(scope="package")
def local_serve(ray_session: None) -> t.Iterator[int]:
    """The session's shared local Ray (tests/conftest.py) with Serve's HTTP proxy on a free
    port of 127.0.0.1; yields the port. Serve is shut down when the package ends; Ray stays
    for the rest of the session."""
    from ray import serve

    shared_ray()
    port = free_port()
    _shared["serving"] = True
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        serve.shutdown()
        _shared["serving"] = False


@pytest.fixture(scope="package")
def endpoint(
    local_serve: int, smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> t.Iterator[Endpoint]:
    """The test app: the embedded model (`smollm2-135m`, half a CPU) and fakes (0.1 CPU each):
    `echo` (fails items containing FAIL), `params` (replies with its params as JSON),
    `chat-only`, and `slow` (1.5 s a request, one at a time, a queue of one)."""
    from ray import serve

    from rig_ray.generator import registry
    from rig_ray.serve import APP_NAME, ServedModel, build_app
    from tests.fakes import CallbackGenerator, FailingGenerator
    from tests.serve.generators import ChatOnlyGenerator, SlowGenerator, params_as_json

    saved = dict(registry._providers)
    registry.register_generator("failing", FailingGenerator)  # travels with the payload
    models = [
        ServedModel(
            generator=f"transformers!{SMOL},max_tokens=16,temperature=0",
            ray_actor_options={"num_cpus": 0.5},
        ),
        ServedModel(generator="failing!echo", ray_actor_options=FAKE_CPU),
        ServedModel(
            generator=CallbackGenerator(model="params", callback=params_as_json),
            ray_actor_options=FAKE_CPU,
        ),
        ServedModel(generator=ChatOnlyGenerator(model="chat-only"), ray_actor_options=FAKE_CPU),
        ServedModel(
            generator=SlowGenerator(model="slow", delay=1.5),
            ray_actor_options=FAKE_CPU,
            max_ongoing_requests=1,
            max_queued_requests=1,
            max_batch_size=1,
        ),
    ]
    try:
        storage = str(tmp_path_factory.mktemp("batch-storage"))
        # one batch request at a time: each is then alone in its engine call, as the online
        # requests it is compared with are (batched bf16 padding changes greedy text)
        # at most 2 stop strings (16 by default): batch lines are held to the app's caps
        app = build_app(
            models,
            api_key=KEY,
            batch_storage=storage,
            batch_max_in_flight=1,
            limits={"max_stop": MAX_STOP},
        )
        serve.run(app, name=APP_NAME, route_prefix="/")
        yield Endpoint(local_serve, batch_storage=storage)
    finally:
        registry._providers.clear()
        registry._providers.update(saved)


ECHO_PREFIX = "/echo"
BODY_TIMEOUT_S = 2.0
"""The echo app's body timeout: a body that stops coming is a 408 after this."""


@pytest.fixture(scope="package")
def echo_app(local_serve: int) -> t.Iterator[Endpoint]:
    """An app of one fake, `echo` (0.1 CPU), at /echo, with a short body timeout
    (BODY_TIMEOUT_S): one generator, so the default one-deployment app. The fuzz and
    reliability tests share it."""
    from ray import serve

    from rig_ray.serve import ServedModel, build_app
    from tests.fakes import EchoGenerator

    model = ServedModel(generator=EchoGenerator(model="echo"), ray_actor_options=FAKE_CPU)
    app = build_app(model, api_key=KEY, limits={"body_timeout_s": BODY_TIMEOUT_S})
    try:
        serve.run(app, name="echo", route_prefix=ECHO_PREFIX)
        yield Endpoint(local_serve, ECHO_PREFIX)
    finally:
        serve.delete("echo", _blocking=False)  # local_serve's shutdown waits for it


@pytest.fixture(scope="package")
def stream_records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the `ticker` generator records the streams that were stopped early."""
    return tmp_path_factory.mktemp("streams")


@pytest.fixture(scope="package")
def upstream() -> t.Iterator[OpenAIStub]:
    """An OpenAI-compatible stub on 127.0.0.1 that streams one word each 0.2 s."""
    with OpenAIStub(stream_delay=0.2) as stub:
        yield stub


@pytest.fixture(scope="package")
def guarded(local_serve: int, stream_records: Path, upstream: OpenAIStub) -> t.Iterator[Endpoint]:
    """A second app, at /guard, with a short request timeout (4 s): `hang` (hangs on HANG,
    batched), `stuck` (after STICK, every call hangs; health probes every 0.5 s), `boom`
    (every call fails with internal text), `ticker` (a registered provider that streams
    8 chunks 0.25 s apart) and `relay` (LiteLLM to the `upstream` stub)."""
    from ray import serve

    from rig_ray.generator import registry
    from rig_ray.serve import ServedModel, build_app
    from tests.serve.generators import BoomGenerator, HangingGenerator, TickerGenerator

    saved = dict(registry._providers)
    registry.register_generator("ticker", TickerGenerator)
    models = [
        ServedModel(generator=HangingGenerator(model="hang"), ray_actor_options=FAKE_CPU),
        ServedModel(
            generator=HangingGenerator(model="stuck"),
            ray_actor_options=FAKE_CPU,
            health_probe=True,
            health_probe_interval_s=0.5,
            health_probe_timeout_s=2,
            health_check_period_s=1,
        ),
        ServedModel(generator=BoomGenerator(model="boom"), ray_actor_options=FAKE_CPU),
        ServedModel(
            generator=f"ticker!ticker,record_dir={stream_records}", ray_actor_options=FAKE_CPU
        ),
        ServedModel(
            generator=f"openai/stub-model,api_base={upstream.base_url},api_key=sk-up",
            name="relay",
            ray_actor_options=FAKE_CPU,
        ),
    ]
    try:
        app = build_app(models, api_key=KEY, request_timeout_s=4)
        serve.run(app, name="guard", route_prefix=GUARD)
        yield Endpoint(local_serve, GUARD)
    finally:
        serve.delete("guard", _blocking=False)  # local_serve's shutdown waits for it
        registry._providers.clear()
        registry._providers.update(saved)


VLLM_MODEL = "smol-vllm"
VLLM_APP = "vllm"
VLLM_GENERATOR = "vllm!smollm2-135m,enforce_eager=True,max_model_len=1024,temperature=0"


def _continuous_vllm() -> bool:
    try:
        import vllm  # noqa: F401

        from rig_ray.generator.vllm_ import VLLMGenerator

        return VLLMGenerator.batches_continuously
    except ImportError:
        return False


@pytest.fixture(scope="package")
def vllm_endpoint(local_serve: int) -> t.Iterator[Endpoint]:
    """The one vLLM app of the package, at /vllm: the embedded SmolLM2 on vLLM's async engine
    (CPU here), eager, max_model_len 1024, greedy, served as `smol-vllm`; one generator, so
    the default one-deployment app. Every Serve test that needs vLLM uses it (one engine
    start for the package)."""
    if not _continuous_vllm():
        pytest.skip("needs vLLM and its generator on the async engine (batches_continuously)")
    from ray import serve

    from rig_ray.serve import ServedModel, build_app

    model = ServedModel(
        generator=VLLM_GENERATOR,
        name=VLLM_MODEL,
        ray_actor_options={"num_cpus": 0.1},  # the cores are shared with the package's apps
    )
    try:
        serve.run(build_app(model, api_key=KEY), name=VLLM_APP, route_prefix=f"/{VLLM_APP}")
        yield Endpoint(local_serve, f"/{VLLM_APP}")
    finally:
        serve.delete(VLLM_APP, _blocking=False)  # local_serve's shutdown waits for it


@pytest.fixture(scope="package")
def vllm_url(vllm_endpoint: Endpoint) -> str:
    """The OpenAI base URL of the vLLM app (its model is `VLLM_MODEL`)."""
    return vllm_endpoint.base_url
