"""The rig-ray command line, on fake generators (engine runs are in tests/engine)."""

from __future__ import annotations

import pytest

from rig_ray.cli import main
from rig_ray.generator import registry
from tests.fakes import EchoGenerator


@pytest.fixture
def echo_provider():
    saved = dict(registry._providers)
    registry.register_generator("echo", EchoGenerator)
    yield
    registry._providers.clear()
    registry._providers.update(saved)


def test_generate_prints_each_reply_and_a_summary(echo_provider, capsys) -> None:
    assert main(["generate", "echo!m", "first prompt", "second prompt"]) == 0
    out = capsys.readouterr().out
    assert "> first prompt" in out and "> second prompt" in out
    assert "2/2 ok with echo!m" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "nope!m", "hi"], "unknown provider 'nope'"),
        (["generate", "echo!m,tempurature=1", "hi"], "did you mean 'temperature'"),
        (["model-path", "no-such-model"], "no embedded model 'no-such-model'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(echo_provider, capsys, argv, message) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_providers_lists_the_builtins(capsys) -> None:
    assert main(["providers"]) == 0
    out = capsys.readouterr().out
    for name in ("litellm", "serve", "transformers", "vllm"):
        assert name in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "echo!m", "hi", "--max-tokens", "0"], "max_tokens"),
        (["generate", "echo!m", "hi", "--temperature", "-1"], "temperature"),
        (["generate", "transformers!m,dtype=foo", "hi"], "dtype"),
    ],
)
def test_bad_settings_are_one_line_too(echo_provider, capsys, argv, message) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_generate_through_litellm_against_a_local_server(capfd) -> None:
    import subprocess
    import sys

    from tests.openai_stub import OpenAIStub

    with OpenAIStub() as stub:
        identifier = f"openai/stub-model,api_base={stub.base_url},api_key=sk-test"
        done = subprocess.run(
            [sys.executable, "-m", "rig_ray.cli", "generate", identifier, "hello there"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    assert "echo: hello there" in done.stdout
