"""The batch manifest's comparison, and the output-folder lock, without Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from rig_ray.batch.lock import LOCK_NAME, FolderLock
from rig_ray.batch.manifest import MANIFEST_NAME, Manifest, check_manifest, read_manifest
from rig_ray.errors import BatchInputError

BASE = Manifest(
    generators=["vllm!/m,max_tokens=5"],
    num_generators=1,
    template="About $topic",
    system=None,
    messages_column=None,
    params={"temperature": 0.5},
    seed=1,
    num_generations=2,
    id_column="id",
)


def test_equal_settings_differ_in_nothing() -> None:
    assert BASE.differences(BASE.model_copy()) == []


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"template": "On $topic"}, ["template"]),
        ({"system": "Be brief."}, ["system"]),
        ({"generators": ["vllm!/other"]}, ["generators"]),
        ({"generators": ["a", "b"], "num_generators": 2}, ["generators", "num_generators"]),
        ({"names": ["served"]}, ["names"]),
        ({"params": {"temperature": 0.7}}, ["params"]),
        ({"seed": None, "id_column": "key"}, ["seed", "id_column"]),
        ({"messages_column": "chat", "template": None}, ["template", "messages_column"]),
        ({"schema_version": 99}, ["schema_version"]),
        ({"num_generations": 1}, ["num_generations"]),  # fewer: the folder holds more
        ({"num_generations": 5}, []),  # more: resume makes the new ones
        ({"params_column": "p"}, ["params_column"]),
        ({"structured": {"parse_as": "books:Book", "json_schema": None}}, ["structured"]),
    ],
)
def test_differences_name_the_fields(change: dict, fields: list[str]) -> None:
    assert BASE.model_copy(update=change).differences(BASE) == fields


def test_check_writes_then_refuses_in_one_line(tmp_path: Path) -> None:
    fs, folder = pafs.LocalFileSystem(), str(tmp_path)
    assert read_manifest(fs, folder, folder) is None
    check_manifest(fs, folder, folder, BASE, write=False)
    assert not (tmp_path / MANIFEST_NAME).exists()
    check_manifest(fs, folder, folder, BASE)
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["template"] == "About $topic"
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]  # no temporary left
    changed = BASE.model_copy(update={"template": "On $topic", "seed": 2})
    with pytest.raises(BatchInputError) as caught:
        check_manifest(fs, folder, folder, changed)
    message = str(caught.value)
    assert message.startswith("template, seed differ from the run that made the output folder")
    assert "\n" not in message
    check_manifest(fs, folder, folder, BASE.model_copy(update={"num_generations": 4}))
    assert read_manifest(fs, folder, folder).num_generations == 4  # type: ignore[union-attr]


def test_a_manifest_that_is_not_ours_is_a_batch_input_error(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text('{"what": 1}')
    with pytest.raises(BatchInputError, match="is not a rig_ray manifest"):
        read_manifest(pafs.LocalFileSystem(), str(tmp_path), str(tmp_path))


def test_a_local_lock_keeps_a_second_process_out(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    with FolderLock(pafs.LocalFileSystem(), str(folder), str(folder)):
        holder = json.loads((folder / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid()
        code = (
            "from rig_ray.batch.lock import FolderLock; import pyarrow.fs as f, sys\n"
            f"FolderLock(f.LocalFileSystem(), {str(folder)!r}, 'out').acquire()"
        )
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert other.returncode != 0
        assert f"is in use by another run (pid {os.getpid()} on host" in other.stderr
    assert not folder.exists()  # made by the lock, left empty: removed again
    with FolderLock(pafs.LocalFileSystem(), str(folder), str(folder)):
        (folder / "part-1.parquet").write_bytes(b"x")
    assert [p.name for p in folder.iterdir()] == ["part-1.parquet"]


def test_an_object_store_lock_names_its_holder_and_is_taken_over_when_stale() -> None:
    fs = pafs._MockFileSystem()
    first = FolderLock(fs, "bucket/out", "mock://bucket/out", settle_s=0, heartbeat_s=0.05)
    first.acquire()
    try:
        second = FolderLock(fs, "bucket/out", "mock://bucket/out", settle_s=0)
        time.sleep(0.2)  # heartbeats keep it fresh
        with pytest.raises(BatchInputError, match=rf"in use by another run \(pid {os.getpid()} "):
            second.acquire()
    finally:
        first.release()
    assert fs.get_file_info(f"bucket/out/{LOCK_NAME}").type == pafs.FileType.NotFound
    # a holder that died is taken over once the store's own time of its lock is old:
    # tests/unit/test_folder_trust.py (the holder's clock plays no part)
