"""The one-deployment app (the default for one generator; `build_app(one_deployment=True)`):
the routes and the generator in one deployment. The same API as the split app (auth,
streams, a client that hangs up, errors, health, the model's stats by its deployment name),
on `ticker` (8 chunks 0.25 s apart); which app `build_app` picks, and the options each gives
the model's replicas."""

from __future__ import annotations

import time
import typing as t
import uuid
from pathlib import Path

import pytest

from tests.serve.conftest import FAKE_CPU
from tests.serve.support import KEY, Endpoint, chat_body

APP = "one"


@pytest.fixture(scope="module")
def one(
    local_serve: int, stream_records: Path, tmp_path_factory: pytest.TempPathFactory
) -> t.Iterator[Endpoint]:
    from ray import serve

    from rig_ray.generator import registry
    from rig_ray.serve import ServedModel, build_app
    from tests.serve.generators import TickerGenerator

    saved = dict(registry._providers)
    registry.register_generator("ticker", TickerGenerator)
    model = ServedModel(
        generator=f"ticker!ticker,record_dir={stream_records}",
        ray_actor_options=FAKE_CPU,
        max_tokens_limit=100,
    )
    try:
        storage = str(tmp_path_factory.mktemp("one-batches"))
        app = build_app(model, api_key=KEY, one_deployment=True, batch_storage=storage)
        serve.run(app, name=APP, route_prefix=f"/{APP}")
        yield Endpoint(local_serve, f"/{APP}")
    finally:
        serve.delete(APP)
        registry._providers.clear()
        registry._providers.update(saved)


def test_one_deployment_serves_one_generator() -> None:
    from rig_ray.errors import ServeConfigError
    from rig_ray.serve import build_app
    from tests.fakes import EchoGenerator

    with pytest.raises(ServeConfigError, match="one generator"):
        build_app([EchoGenerator(model="a"), EchoGenerator(model="b")], one_deployment=True)


def test_the_app_is_one_deployment_named_after_the_model(one: Endpoint) -> None:
    from ray import serve

    deployments = serve.status().applications[APP].deployments
    assert list(deployments) == ["ticker"]
    with one.client() as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["ticker"]
        reply = client.post("/v1/chat/completions", json=chat_body(model="ticker"))
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"].startswith("tick0 ")
    stats = serve.get_deployment_handle("ticker", app_name=APP).stats.remote().result()
    assert stats["items"] >= 1


def test_auth_limits_and_unknown_models_are_answered_as_usual(one: Endpoint) -> None:
    with one.client(api_key=None) as client:
        assert (
            client.post("/v1/chat/completions", json=chat_body(model="ticker")).status_code == 401
        )
    with one.client() as client:
        too_many = client.post(
            "/v1/chat/completions", json=chat_body(model="ticker", max_tokens=101)
        )
        unknown = client.post("/v1/chat/completions", json=chat_body(model="nope"))
    assert (too_many.status_code, too_many.json()["error"]["param"]) == (400, "max_tokens")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "model_not_found")


async def test_chunks_stream_as_the_generator_makes_them(one: Endpoint) -> None:
    async with one.openai() as client:
        started = time.monotonic()
        stream = await client.chat.completions.create(
            model="ticker",
            messages=[{"role": "user", "content": "count"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        arrivals, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append((time.monotonic() - started, chunk.choices[0].delta.content))
            usage = chunk.usage or usage
    assert [text for _, text in arrivals] == [f"tick{i} " for i in range(8)]
    assert arrivals[-1][0] - arrivals[0][0] >= 6 * 0.25  # spread out, not batched
    assert usage is not None and usage.completion_tokens == 8


async def test_a_client_that_hangs_up_stops_the_generation(
    one: Endpoint, stream_records: Path
) -> None:
    from tests.serve.test_streaming import hang_up_after_two_chunks

    await hang_up_after_two_chunks(one, stream_records, f"leaving-one-{uuid.uuid4().hex}")


def test_one_generator_is_one_deployment_unless_the_split_app_is_asked_for() -> None:
    from rig_ray.serve import INGRESS_NAME, build_app
    from rig_ray.serve.config import app_builder
    from tests.fakes import EchoGenerator

    def top(app: t.Any) -> str:
        return str(app._bound_deployment.name)

    assert top(build_app(EchoGenerator(model="a"))) == "a"
    assert top(build_app(EchoGenerator(model="a"), one_deployment=True)) == "a"
    assert top(build_app(EchoGenerator(model="a"), one_deployment=False)) == INGRESS_NAME
    two = [EchoGenerator(model="a"), EchoGenerator(model="b")]
    assert top(build_app(two)) == INGRESS_NAME
    models = [{"generator": "transformers!smollm2-135m"}]
    assert top(app_builder({"models": models})) == "smollm2-135m"
    assert top(app_builder({"models": models, "one_deployment": True})) == "smollm2-135m"
    assert top(app_builder({"models": models, "one_deployment": False})) == INGRESS_NAME


def test_both_apps_give_the_model_the_same_replicas() -> None:
    """Placement (GPU bundles of a TP engine), sizing and user_config are the model's in
    either app; the Ray tests (tests/ray/test_gpu_placement.py, test_engine_lifecycle.py)
    run the default, one deployment."""
    import rig_ray as rr
    from rig_ray.serve import ServedModel, build_app

    model = ServedModel(
        generator=rr.get_generator("vllm!m,tensor_parallel_size=2"),
        name="big",
        ray_actor_options={"num_cpus": 2, "runtime_env": {"env_vars": {"A": "1"}}},
        max_ongoing_requests=77,
    )
    one = build_app(model)._bound_deployment
    split = build_app(model, one_deployment=False)._bound_deployment
    replica = split.init_args[0]["big"].handle._bound_deployment
    assert (one.name, replica.name) == ("big", "big")
    for deployment in (one, replica):
        config = deployment._replica_config
        assert config.placement_group_bundles == [{"GPU": 1.0, "CPU": 2.0}, {"GPU": 1.0}]
        assert config.placement_group_strategy == "STRICT_PACK"
        assert deployment.ray_actor_options["runtime_env"] == {"env_vars": {"A": "1"}}
        assert deployment.max_ongoing_requests == 77
        assert deployment.user_config == {"max_batch_size": 32, "batch_wait_timeout_s": 0.05}
    assert split.max_ongoing_requests == 1024  # the ingress


def test_a_replicas_memory_is_in_the_bundle_it_runs_in() -> None:
    import rig_ray as rr
    from rig_ray.serve import ServedModel

    model = ServedModel(
        generator=rr.get_generator("vllm!m,tensor_parallel_size=2"),
        ray_actor_options={"num_cpus": 1, "memory": 2**30},
    )
    options = model.placement_options()
    assert options["ray_actor_options"]["memory"] == 2**30
    assert options["placement_group_bundles"][0] == {"GPU": 1.0, "CPU": 1.0, "memory": 2**30}
    assert options["placement_group_bundles"][1] == {"GPU": 1.0}


def test_the_split_apps_ingress_lets_through_what_its_models_replicas_take() -> None:
    from rig_ray.serve import ServedModel, build_app
    from tests.fakes import EchoGenerator

    wide = ServedModel(generator=EchoGenerator(model="a"), max_ongoing_requests=900, num_replicas=2)
    scaled = ServedModel(
        generator=EchoGenerator(model="b"),
        max_ongoing_requests=300,
        autoscaling_config={"min_replicas": 1, "max_replicas": 3},
    )
    assert build_app([wide, scaled])._bound_deployment.max_ongoing_requests == 2 * 900 + 3 * 300
    small = ServedModel(generator=EchoGenerator(model="c"), max_ongoing_requests=8)
    assert (
        build_app(
            [small, small.model_copy(update={"name": "d"})]
        )._bound_deployment.max_ongoing_requests
        == 1024
    )
    asked = build_app([wide, scaled], ingress_options={"max_ongoing_requests": 50})
    assert asked._bound_deployment.max_ongoing_requests == 50  # an explicit setting wins


def test_ingress_options_apply_to_the_one_deployment_but_not_its_resources() -> None:
    from rig_ray.errors import ServeConfigError
    from rig_ray.serve import ServedModel, build_app
    from tests.fakes import EchoGenerator

    model = ServedModel(
        generator=EchoGenerator(model="a"),
        ray_actor_options={"num_cpus": 0.5},
        autoscaling_config={"min_replicas": 1, "max_replicas": 3},
    )
    options = {
        "num_replicas": 2,
        "max_ongoing_requests": 9,
        "ray_actor_options": {"runtime_env": {"env_vars": {"B": "2"}}},
    }
    one = build_app(model, ingress_options=options)._bound_deployment
    assert (one.num_replicas, one.max_ongoing_requests) == (2, 9)
    assert one._deployment_config.autoscaling_config is None
    assert one.ray_actor_options["num_cpus"] == 0.5
    assert one.ray_actor_options["runtime_env"] == {"env_vars": {"B": "2"}}
    for wrong in ({"ray_actor_options": {"num_cpus": 0}}, {"placement_group_bundles": [{}]}):
        with pytest.raises(ServeConfigError, match="model's ray_actor_options"):
            build_app(model, ingress_options=wrong)
    split = build_app(
        model, ingress_options={"ray_actor_options": {"num_cpus": 0}}, one_deployment=False
    )
    assert split._bound_deployment.ray_actor_options["num_cpus"] == 0


# The real engine behind one deployment: the package's vLLM app (`vllm_endpoint`, one
# generator) is a one-deployment app; tests/serve/test_vllm_streaming.py streams from it.
