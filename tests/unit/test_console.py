"""What Ray forwards from actors to the driver's console: redacted always, kept out of a quiet
job's console (`rig_ray.batch.console`)."""

from __future__ import annotations

import typing as t

import pytest

from rig_ray.batch import console
from rig_ray.generator.params import GenerateParams
from tests.fakes import LeakyGenerator

KEY = "sk-bare-Zq5cV8nW1"
PASSWORD = "Zqp@ss:w@rd!x"


@pytest.fixture
def printed(monkeypatch: pytest.MonkeyPatch) -> t.Iterator[list[dict[str, t.Any]]]:
    """Ray's dispatcher with a stand-in for its printing handler, which records what it gets."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    seen: list[dict[str, t.Any]] = []
    monkeypatch.setattr(dispatcher, "handlers", [("ray_print_logs", seen.append)])
    monkeypatch.setattr(console, "_FORWARDING", console._Forwarding())
    yield seen


def _emit(*lines: str) -> None:
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    dispatcher.emit({"lines": list(lines), "pid": 7, "is_err": True, "actor_name": "a"})


def _leaky() -> LeakyGenerator:
    params = GenerateParams(api_base=f"https://u:{PASSWORD}@h.example/v1")
    return LeakyGenerator(model="m", api_key=KEY, params=params)


def test_forwarded_lines_are_scrubbed_with_the_generators_secrets(
    printed: list[dict[str, t.Any]],
) -> None:
    generator = _leaky()
    with console.actor_output([generator], verbose=True):
        _emit(generator.confession(), "Authorization: Token ZqTok3n99 sent", "plain line")
    [data] = printed
    shown = "\n".join(data["lines"])
    assert KEY not in shown and PASSWORD not in shown and "ZqTok3n99" not in shown
    assert "plain line" in shown and data["pid"] == 7


def test_a_quiet_job_keeps_actor_lines_out_also_when_they_come_late(
    printed: list[dict[str, t.Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    with console.actor_output([_leaky()], verbose=False):
        _emit("INFO vllm loading", "Loading safetensors checkpoint shards: 100%")
    _emit("a late line of the job")
    assert printed == []
    monkeypatch.setattr(console._FORWARDING, "quiet_until", 0.0)  # long after the job
    _emit(f"other work, key {KEY}")
    assert [data["lines"] for data in printed] == [["other work, key ***"]]


def test_the_stderr_pump_drops_rays_notice_and_scrubs(tmp_path: t.Any) -> None:
    import os

    out = tmp_path / "err.txt"
    with out.open("wb") as target:
        console._write(
            target.fileno(),
            [
                b"[2026-12-04 22:00:00,000 E 1 1] core_worker.cc:2891: Actor with class name: "
                b"'X' has constructor arguments in the object store and max_restarts > 0 ...",
                f"boom {KEY} https://u:{PASSWORD}@h".encode(),
            ],
            (_leaky(),),
        )
        os.fsync(target.fileno())
    assert out.read_text() == "boom *** https://u:***@h\n"
