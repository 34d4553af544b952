"""Building the app, with no Ray running: model names and options, the API key, and
jobs/serve_config.yaml checked against Ray Serve's own schema and built from its args."""

from __future__ import annotations

import json
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

import rig_ray as rr
from rig_ray.errors import InvalidGeneratorError, ServeConfigError
from rig_ray.serve import ServedModel, build_app, deployment_name
from rig_ray.serve.app import served_models
from rig_ray.serve.config import AppArgs, app_builder

CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "serve_config.yaml"


def names(served: list[ServedModel]) -> list[str]:
    return [model.served_name for model in served]


def test_names_default_to_the_last_part_of_the_model_path() -> None:
    served = served_models(
        [
            "transformers!smollm2-135m",
            "vllm!/models/llama-3-8b/",
            "openai/gpt-4o,api_base=http://127.0.0.1:1/v1",
            ServedModel(generator="transformers!/m/a", name="mine"),
        ]
    )
    assert names(served) == ["smollm2-135m", "llama-3-8b", "gpt-4o", "mine"]
    assert names(served_models("transformers!/a/b", name="x")) == ["x"]
    assert names(served_models(["vllm!m", "transformers!m"], name=["v", "t"])) == ["v", "t"]


def test_deployment_names_are_safe_for_serve() -> None:
    assert deployment_name("meta-llama/Llama 3#8b") == "meta-llama_Llama_3_8b"
    assert deployment_name("smollm2-135m") == "smollm2-135m"


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: served_models([]), ServeConfigError, "at least one generator"),
        (lambda: served_models(["vllm!m", "transformers!m"]), ServeConfigError, "own name"),
        (lambda: served_models(["vllm!a/b", "vllm!c/b"]), ServeConfigError, "'b'"),
        (lambda: served_models("vllm!m", name=["a", "b"]), ServeConfigError, "2 names for 1"),
        (lambda: served_models("vllm!OpenAIIngress"), ServeConfigError, "reserved"),
        (lambda: served_models("vllm!m,tempurature=1"), InvalidGeneratorError, "temperature"),
        (lambda: served_models(5), InvalidGeneratorError, "not int"),  # type: ignore[arg-type]
        (lambda: served_models("vllm!m", max_batch=2), ValidationError, "max_batch"),
        (lambda: served_models("vllm!m", max_batch_size=0), ValidationError, "max_batch_size"),
        (
            lambda: served_models("vllm!m", num_replicas=2, autoscaling_config={}),
            ValidationError,
            "not both",
        ),
        (lambda: ServedModel(generator="nope!m"), ValidationError, "unknown provider"),
    ],
)
def test_bad_settings_fail_clearly(call: t.Callable[[], t.Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_deployment_options() -> None:
    fixed = ServedModel(generator="vllm!/m/big", ray_actor_options={"num_gpus": 1}, num_replicas=2)
    options = fixed.deployment_options()
    assert options["name"] == "big" and options["num_replicas"] == 2
    assert options["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 1}
    assert "placement_group_bundles" not in options  # one GPU: the replica holds it
    assert options["user_config"] == {"max_batch_size": 32, "batch_wait_timeout_s": 0.05}
    assert options["backpressure_config"] == {"status_code": 503, "retry_after_s": 1.0}
    assert options["max_queued_requests"] == 256
    # vLLM: about 1.1 x its max_num_seqs (tests/unit/test_engine_sizing.py), at least 64
    assert options["max_ongoing_requests"] == fixed.ongoing_requests() >= 64
    scaled = ServedModel(
        generator="vllm!m", autoscaling_config={"min_replicas": 0, "max_replicas": 4}
    ).deployment_options()
    assert "num_replicas" not in scaled and scaled["autoscaling_config"]["max_replicas"] == 4
    # a replica is scaled out at 3/4 of what it takes at once, not at Serve's default of 2
    share = scaled["autoscaling_config"]["target_ongoing_requests"] / scaled["max_ongoing_requests"]
    assert 0.74 < share < 0.76
    asked = {"max_replicas": 2, "target_ongoing_requests": 5}
    assert (
        ServedModel(generator="vllm!m", autoscaling_config=asked).deployment_options()[
            "autoscaling_config"
        ]
        == asked
    )
    # a stopping replica has time to drain and unload before Serve kills it
    assert options["graceful_shutdown_timeout_s"] == 120.0
    assert ServedModel(generator="vllm!m").deployment_options()["num_replicas"] == 1


def test_only_a_digest_of_the_api_key_is_in_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray import cloudpickle

    monkeypatch.setenv("RIG_RAY_API_KEY", "secret-from-env-1234")
    from_env = cloudpickle.dumps(build_app("transformers!smollm2-135m"))
    given = cloudpickle.dumps(build_app("transformers!smollm2-135m", api_key="secret-given-5678"))
    assert b"secret-from-env-1234" not in from_env and b"secret-given-5678" not in given
    assert from_env != given


def test_generator_objects_and_custom_classes_are_accepted() -> None:
    from tests.serve.generators import SlowGenerator

    app = build_app([SlowGenerator(model="slow"), rr.get_generator("vllm!m")], name=["a", "b"])
    assert app is not None


def test_the_config_file_passes_serves_schema_and_builds() -> None:
    from ray._common.utils import import_attr
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    [application] = config.applications
    assert application.import_path == "rig_ray.serve.config:app_builder"
    assert application.route_prefix == "/"
    args = AppArgs.model_validate(application.args)
    assert [model.served_name for model in args.models] == ["smollm2-135m"]
    assert args.models[0].generator == rr.get_generator("transformers!smollm2-135m,max_tokens=256")
    # the way `serve run` / `serve deploy` call the builder
    builder = import_attr(application.import_path)
    app = call_user_app_builder_with_args_if_necessary(builder, application.args)
    assert isinstance(app, Application)


def test_the_builder_registers_providers_named_in_the_args() -> None:
    from rig_ray.generator import registry

    saved = dict(registry._providers)
    try:
        app_builder(
            {
                "providers": {"slow": "tests.serve.generators:SlowGenerator"},
                "models": [{"generator": "slow!m,delay=0.5"}],
            }
        )
        assert rr.get_generator("slow!m").delay == 1.0  # type: ignore[attr-defined]
    finally:
        registry._providers.clear()
        registry._providers.update(saved)
    with pytest.raises(ValidationError, match="models"):
        app_builder({"models": []})


def test_importing_the_serve_package_and_cli_stays_light() -> None:
    """`rig-ray --help` imports rig_ray.serve.cli: no Ray Serve, FastAPI or engine yet."""
    heavy = ["ray", "ray.serve", "fastapi", "torch", "transformers", "vllm", "litellm"]
    code = (
        "import json, sys; import rig_ray, rig_ray.serve, rig_ray.serve.cli; "
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize(
    ("kwargs", "env", "match"),
    [
        ({"api_key": ""}, None, "api_key is empty"),
        ({"api_key": "  "}, None, "api_key is empty"),
        ({}, "", "RIG_RAY_API_KEY is set but empty"),
        ({"api_key": "k", "api_key_env": "X"}, None, "not both"),
        ({"api_key_env": ""}, None, "api_key_env is empty"),
        ({"request_timeout_s": 0}, None, "request_timeout_s"),
    ],
)
def test_an_empty_key_is_an_error_not_no_auth(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, t.Any], env: str | None, match: str
) -> None:
    if env is None:
        monkeypatch.delenv("RIG_RAY_API_KEY", raising=False)
    else:
        monkeypatch.setenv("RIG_RAY_API_KEY", env)
    with pytest.raises(ServeConfigError, match=match):
        build_app("transformers!smollm2-135m", **kwargs)


def test_a_key_named_by_its_variable_is_read_where_the_ingress_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray import cloudpickle

    from rig_ray.serve.auth import Auth, key_digest

    monkeypatch.setenv("MY_SERVE_KEY", "secret-in-the-cluster-42")
    app = build_app("transformers!smollm2-135m", api_key_env="MY_SERVE_KEY")
    assert b"secret-in-the-cluster-42" not in cloudpickle.dumps(app)
    auth = Auth(env="MY_SERVE_KEY")
    assert auth.resolve() == key_digest("secret-in-the-cluster-42")
    for value in (None, ""):  # the ingress refuses to start: never serve without the key
        if value is None:
            monkeypatch.delenv("MY_SERVE_KEY")
        else:
            monkeypatch.setenv("MY_SERVE_KEY", value)
        with pytest.raises(ServeConfigError, match="MY_SERVE_KEY"):
            auth.resolve()


def test_config_files_require_a_key_unless_they_say_no_auth() -> None:
    models = [{"generator": "transformers!smollm2-135m"}]
    assert AppArgs.model_validate({"models": models}).api_key_env == "RIG_RAY_API_KEY"
    assert AppArgs.model_validate({"models": models, "api_key_env": None, "no_auth": True})
    with pytest.raises(ValidationError, match="not both"):
        AppArgs.model_validate({"models": models, "no_auth": True})
    with pytest.raises(ValidationError, match="not both"):
        AppArgs.model_validate({"models": models, "api_key_env": None})
    parsed = AppArgs.model_validate(
        {"models": models, "limits": {"max_body_bytes": 1000}, "request_timeout_s": 5}
    )
    assert parsed.limits.max_body_bytes == 1000 and parsed.request_timeout_s == 5
    with pytest.raises(ValidationError, match="max_bodybytes"):
        AppArgs.model_validate({"models": models, "limits": {"max_bodybytes": 1}})


def test_health_probes_default_to_local_engines() -> None:
    assert ServedModel(generator="transformers!m").replica_options().health_probe
    remote = ServedModel(generator="openai/gpt-4o,api_base=http://127.0.0.1:1/v1")
    assert not remote.replica_options().health_probe
    assert ServedModel(generator="openai/x", health_probe=True).replica_options().health_probe
