"""The public surface: every exported name resolves, and importing loads no heavy engine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import rig_ray as rr

HEAVY = ("torch", "vllm", "transformers", "litellm", "ray")


def test_every_exported_name_resolves() -> None:
    for name in rr.__all__:
        assert getattr(rr, name) is not None, name


def test_import_loads_no_engine() -> None:
    code = (
        "import json, sys; import rig_ray; "
        "rig_ray.get_generator('vllm!m'); rig_ray.get_generator('transformers!m'); "
        "rig_ray.get_generator('gpt-4o'); rig_ray.LLMPool; rig_ray.remote; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize(
    ("provider_cls", "package", "hint"),
    [
        (rr.VLLMGenerator, "vllm", "rig_ray[vllm]"),
        (rr.TransformersGenerator, "transformers", "rig_ray[transformers]"),
    ],
)
def test_missing_engine_package_names_the_extra(provider_cls, package, hint, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    with pytest.raises(rr.MissingDependencyError, match=hint.replace("[", r"\[")) as info:
        provider_cls(model="some-model").load()
    assert isinstance(info.value, ImportError)
    assert info.value.package == package


async def test_missing_litellm_names_the_fix(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "litellm", None)
    generator = rr.get_generator("gpt-4o")
    with pytest.raises(rr.MissingDependencyError, match="litellm"):
        await generator.generate_texts(["hi"], [rr.GenerateParams()])


def test_subpackages_are_lazy_attributes() -> None:
    code = (
        "import json, sys; import rig_ray as rr; "
        "before = [m for m in sys.modules if m.startswith(('rig_ray.batch', 'rig_ray.serve'))]; "
        "run, serve = rr.batch.run, rr.serve; "
        "print(json.dumps({'before': before, 'run': run.__module__, 'serve': serve.__name__, "
        f"'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["before"] == []  # nothing of them is imported until asked for
    assert seen["run"] == "rig_ray.batch.run" and seen["serve"] == "rig_ray.serve"
    assert "torch" not in seen["heavy"] and "vllm" not in seen["heavy"]
    assert "transformers" not in seen["heavy"]
    with pytest.raises(AttributeError, match="no_such_thing"):
        rr.no_such_thing  # noqa: B018
    assert {"batch", "serve"} <= set(dir(rr))


def test_batch_takes_g_for_generator() -> None:
    from rig_ray.cli import _parser

    args = _parser().parse_args(["batch", "in.jsonl", "out", "-g", "echo!m", "-g", "fixed!m"])
    assert args.generators == ["echo!m", "fixed!m"]
