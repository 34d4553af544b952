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
