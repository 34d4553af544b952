"""An engine belongs to its generator until the actor ends: `teardown()`, an actor whose
handles are gone, a batch actor Ray Data ends, a Serve replica deleted all unload it; and a
batch actor whose engine died exits so that Ray restarts it and retries the batch."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import pytest

import rig_ray as rr
from tests.ray.placement_members import EngineDiesOnce, NotesUnload, notes

CPU = 0.25


def wait_for_notes(log: Path, count: int, timeout_s: float = 60.0) -> list[tuple[str, int]]:
    """The log's notes once it has `count` of them (or what it has after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while len(notes(log)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return notes(log)


def loaded_then_unloaded(found: list[tuple[str, int]]) -> bool:
    """Each process that loaded unloaded after."""
    return all(
        ("unload", pid) in found[index + 1 :]
        for index, (kind, pid) in enumerate(found)
        if kind == "load"
    )


def test_teardown_unloads_in_the_actor_before_it_ends(ray_and_serve, tmp_path: Path) -> None:
    log = tmp_path / "log"
    remote = rr.remote(NotesUnload(model="n", log=str(log)), num_cpus=CPU)
    remote.load()
    remote.teardown()
    [(first, pid), (second, same)] = notes(log)  # written before teardown returned
    assert (first, second) == ("load", "unload") and pid == same


def test_an_actor_whose_handles_are_gone_unloads(ray_and_serve, tmp_path: Path) -> None:
    log = tmp_path / "log"
    remote = rr.remote(NotesUnload(model="n", log=str(log)), num_cpus=CPU, max_restarts=0)
    remote.load()
    del remote
    gc.collect()
    found = wait_for_notes(log, 2)
    assert [kind for kind, _ in found] == ["load", "unload"]


def test_batch_actors_unload_when_ray_data_ends_them(ray_and_serve, tmp_path: Path) -> None:
    from rig_ray.batch import generate

    log = tmp_path / "log"
    dataset = ray_and_serve.data.from_items([{"prompt": f"p{n}"} for n in range(6)])
    rows = generate(
        dataset, generator=NotesUnload(model="n", log=str(log)), num_cpus=CPU, batch_size=2
    ).take_all()
    assert sorted(row["text"] for row in rows) == [f"p{n}" for n in range(6)]
    found = wait_for_notes(log, 2)
    assert found and loaded_then_unloaded(found), found


def test_a_deleted_serve_replica_unloads(ray_and_serve, tmp_path: Path) -> None:
    from ray import serve

    from rig_ray.serve import ServedModel, build_app

    log = tmp_path / "log"
    served = ServedModel(
        generator=NotesUnload(model="n", log=str(log)),
        ray_actor_options={"num_cpus": CPU},
        health_probe=False,
    )
    serve.run(build_app([served]), name="lifecycle", route_prefix=None)
    handle = serve.get_app_handle("lifecycle")  # its routes, in either app
    messages = [rr.Message(role="user", content="hi")]
    [reply] = handle.chat.remote("n", "req-1", messages, rr.GenerateParams(), 1).result()
    assert reply.message.content == "hi"
    assert [kind for kind, _ in notes(log)] == ["load"]
    serve.delete("lifecycle")
    found = wait_for_notes(log, 2)
    assert [kind for kind, _ in found] == ["load", "unload"]


@pytest.mark.parametrize(
    "raises", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["in-place", "raised"]
)
def test_a_dead_engine_restarts_the_batch_actor_and_its_batch_is_retried(
    ray_and_serve, tmp_path: Path, raises: bool
) -> None:
    from rig_ray.batch import generate

    log, marker = tmp_path / "log", tmp_path / "died"
    dataset = ray_and_serve.data.from_items([{"prompt": f"p{n}"} for n in range(6)])
    generator = EngineDiesOnce(model="d", log=str(log), marker=str(marker), raises=raises)
    rows = generate(
        dataset, generator=generator, num_cpus=CPU, batch_size=2, max_restarts=2
    ).take_all()
    assert marker.exists()  # the engine did die once
    assert all(row["error"] is None for row in rows)
    assert sorted(row["text"] for row in rows) == [f"p{n}" for n in range(6)]
    died = int(marker.read_text())
    found = notes(log)
    assert ("unload", died) in found  # what was left of the dead engine was unloaded
    assert any(kind == "load" and pid != died for kind, pid in found)  # a restarted actor


@pytest.mark.slow  # an engine actor of its own, killed
def test_a_pipeline_stage_whose_engine_hangs_on_unload_still_ends_its_actors(
    ray_and_serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    import psutil

    from rig_ray.batch import Stage, pipeline_engines
    from tests.ray.placement_members import HangsOnUnload

    monkeypatch.setattr(pipeline_engines, "UNLOAD_WAIT_S", 1.0)
    log = tmp_path / "log"
    stage = Stage("stuck", generator=HangsOnUnload(model="h", log=str(log)), template="$q")
    engines = pipeline_engines.StageEngines(stage, CPU)
    engines.load()
    [(kind, pid)] = notes(log)
    assert kind == "load"
    engines.unload()  # returns: the actor is ended though its engine never unloaded
    assert "did not unload in 1s" in caplog.text
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_batch_stage_leaves_a_users_remote_engine_as_it_is(ray_and_serve, tmp_path: Path) -> None:
    """An engine in an actor of its own (`rr.remote()`) is its owner's: a batch actor that
    ends (or exits to be restarted) does not unload it."""
    from rig_ray.batch.prompts import PromptSpec
    from rig_ray.batch.stage import GenerateStage, StageConfig
    from rig_ray.cluster.options import config_payload

    log = tmp_path / "log"
    remote = rr.remote(NotesUnload(model="n", log=str(log)), num_cpus=CPU)
    try:
        config = StageConfig(
            prompts=PromptSpec(template="$q").resolve(("id", "q")), input_columns=("id", "q")
        )
        stage = GenerateStage(config_payload(remote), config)  # loads it, as a batch actor
        stage.__del__()  # as Ray Data's end of the actor
        assert [kind for kind, _ in notes(log)] == ["load"]
        assert remote.generate([[rr.Message(role="user", content="still here?")]])
    finally:
        remote.teardown()
    assert [kind for kind, _ in wait_for_notes(log, 2)] == ["load", "unload"]
