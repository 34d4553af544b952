"""Output folders under hostile or unusual conditions, without Ray: links planted in the
folder, filesystems without locks, object-store locks judged on the store's own clock,
parts written whole, the manifest pinning only what changes an output."""

from __future__ import annotations

import errno
import json
import os
import time
import typing as t
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from rig_ray.batch import output
from rig_ray.batch.lock import LOCK_NAME, FolderLock
from rig_ray.batch.manifest import MANIFEST_NAME, Manifest, read_manifest, write_manifest
from rig_ray.batch.output import OutputFolder
from rig_ray.batch.prompts import PromptSpec
from rig_ray.batch.schema import OUTPUT_SCHEMA
from rig_ray.errors import BatchInputError, FolderLockLostError

MANIFEST = Manifest(
    generators=["vllm!/m"],
    num_generators=1,
    template="$topic",
    system=None,
    messages_column=None,
    params={},
    seed=None,
    num_generations=1,
    id_column="id",
)


def _rows(ids: list[str], indices: list[int | None]) -> pa.Table:
    columns: dict[str, list[t.Any]] = {name: [None] * len(ids) for name in OUTPUT_SCHEMA.names}
    columns["id"], columns["generation_index"] = ids, indices
    return pa.Table.from_pydict(columns, schema=OUTPUT_SCHEMA)


# -- links are never followed (defect 6) ------------------------------------------------


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / LOCK_NAME).symlink_to(target)
    with pytest.raises(BatchInputError, match="is a symbolic link"):
        FolderLock(pafs.LocalFileSystem(), str(folder), str(folder)).acquire()
    assert target.read_text() == "keep me"


def test_the_manifest_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / f".tmp-{MANIFEST_NAME}").symlink_to(target)  # the temporary name runs used
    write_manifest(pafs.LocalFileSystem(), str(folder), MANIFEST)
    assert target.read_text() == "keep me"
    assert read_manifest(pafs.LocalFileSystem(), str(folder), str(folder)) == MANIFEST


def test_a_part_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    final = tmp_path / "part-x.parquet"
    (tmp_path / ".tmp-part-x.parquet").symlink_to(target)  # the temporary name runs used
    output._write_whole(pafs.LocalFileSystem(), _rows(["a"], [0]), str(final))
    assert target.read_text() == "keep me"
    assert pq.read_table(final).column("id").to_pylist() == ["a"]


# -- parts and manifest are synced, and written whole on any filesystem (defect 10) -------


def test_parts_and_the_manifest_are_synced_before_their_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os, "replace", lambda a, b: (events.append(f"rename {Path(b).name}"), real_replace(a, b))
    )
    output._write_whole(pafs.LocalFileSystem(), _rows(["a"], [0]), str(tmp_path / "p.parquet"))
    write_manifest(pafs.LocalFileSystem(), str(tmp_path), MANIFEST)
    renames = [i for i, e in enumerate(events) if e.startswith("rename")]
    assert [events[i] for i in renames] == ["rename p.parquet", f"rename {MANIFEST_NAME}"]
    assert all(events[i - 1] == "fsync" for i in renames)


def test_parts_on_hdfs_like_filesystems_go_to_a_temporary_name_first(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec.implementations.local")
    opened: list[str] = []

    class Recording(fsspec.LocalFileSystem):  # type: ignore[misc,name-defined]
        def open(self, path: str, mode: str = "rb", *args: t.Any, **kwargs: t.Any) -> t.Any:
            if "w" in mode:
                opened.append(Path(path).name)
            return super().open(path, mode, *args, **kwargs)

    filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(Recording()))
    assert filesystem.type_name not in output.OBJECT_STORES
    final = f"{tmp_path}/part-x.parquet"
    output._write_whole(filesystem, _rows(["a"], [0]), final)
    assert opened and all(name.startswith(".tmp-") for name in opened)
    assert pq.read_table(final).column("id").to_pylist() == ["a"]


# -- the scan and the lock's odd cases (defect 10) ---------------------------------------


def test_a_part_with_a_negative_or_null_generation_index_does_not_crash_the_scan(
    tmp_path: Path,
) -> None:
    part = pa.table(
        {
            "id": ["a", "b", "c"],
            "generation_index": pa.array([0, -1, None], pa.int32()),
            "error": pa.array([None, None, None], pa.string()),
        }
    )
    pq.write_table(part, tmp_path / "part-1.parquet")  # written by some other tool
    scan = OutputFolder(str(tmp_path)).scan()
    assert scan.is_done("a", 0) and scan.generations() == 1
    assert not scan.is_done("b", 0) and not scan.failed


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS])
def test_a_filesystem_without_locks_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    import fcntl

    def refuse(fd: int, operation: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", refuse)
    with pytest.raises(BatchInputError, match="does not support file locks") as caught:
        FolderLock(pafs.LocalFileSystem(), str(tmp_path), str(tmp_path)).acquire()
    assert errno.errorcode[code] in str(caught.value)


# -- object-store locks (defect 8) -------------------------------------------------------


def _store(tmp_path: Path) -> pafs.FileSystem:
    """An object-store-like filesystem (not a LocalFileSystem) with real modification times."""
    return pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())


def _plant(tmp_path: Path, holder: dict[str, t.Any], age_s: float) -> None:
    (tmp_path / "out").mkdir(exist_ok=True)
    lock = tmp_path / "out" / LOCK_NAME
    lock.write_text(json.dumps(holder))
    written = time.time() - age_s
    os.utime(lock, (written, written))


def test_a_fresh_lock_from_a_holder_whose_clock_is_behind_is_not_taken_over(
    tmp_path: Path,
) -> None:
    # The holder's clock says 1970; the store wrote its lock a second ago: it is alive.
    _plant(tmp_path, {"pid": 1, "host": "far", "token": "x", "heartbeat": 0, "beats": 3}, 1)
    second = FolderLock(_store(tmp_path), "out", "store://out", settle_s=0, stale_after_s=60)
    with pytest.raises(BatchInputError, match="in use by another run"):
        second.acquire()


def test_a_lock_the_store_wrote_long_ago_is_taken_over_whatever_its_holder_claims(
    tmp_path: Path,
) -> None:
    far_future = time.time() + 10_000  # a holder whose clock runs ahead
    _plant(tmp_path, {"pid": 1, "host": "far", "token": "x", "heartbeat": far_future}, 600)
    taker = FolderLock(_store(tmp_path), "out", "store://out", settle_s=0, stale_after_s=60)
    taker.acquire()
    try:
        assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["pid"] == os.getpid()
        taker.check()
    finally:
        taker.release()
    assert not (tmp_path / "out" / LOCK_NAME).exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_a_run_whose_lock_was_taken_over_stops_before_its_next_part(tmp_path: Path) -> None:
    store = _store(tmp_path)
    lock = FolderLock(store, "out", "store://out", settle_s=0, heartbeat_s=0.05)
    lock.acquire()
    try:
        lock.check()
        holder = {"pid": 2, "host": "other", "token": "theirs", "beats": 1}
        (tmp_path / "out" / LOCK_NAME).write_text(json.dumps(holder))
        folder = OutputFolder(str(tmp_path / "out"))
        folder.filesystem, folder.path = store, "out"
        writer = folder.writer(rows_per_part=1, seconds_per_part=60, before_part=lock.check)
        with pytest.raises(FolderLockLostError, match="another run took it over"):
            writer.add(_rows(["a"], [0]))
        assert not folder.parts()
        time.sleep(0.2)  # heartbeats come and go: the new holder's lock is never overwritten
        assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["token"] == "theirs"
    finally:
        lock.release()
    assert (tmp_path / "out" / LOCK_NAME).exists()  # not ours to remove


def test_a_heartbeat_that_cannot_be_written_loses_the_lock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fsspec = pytest.importorskip("fsspec.implementations.local")
    failing: list[bool] = []

    class Flaky(fsspec.LocalFileSystem):  # type: ignore[misc,name-defined]
        def open(self, path: str, mode: str = "rb", *args: t.Any, **kwargs: t.Any) -> t.Any:
            if "w" in mode and failing and path.endswith(LOCK_NAME):
                raise OSError(errno.EIO, "the store refused the write")
            return super().open(path, mode, *args, **kwargs)

    store = pafs.PyFileSystem(pafs.FSSpecHandler(Flaky()))
    folder = f"{tmp_path}/out"
    lock = FolderLock(store, folder, "store://out", settle_s=0, heartbeat_s=0.02, stale_after_s=0.3)
    lock.acquire()
    try:
        lock.check()
        failing.append(True)  # from now on every heartbeat write fails
        deadline = time.monotonic() + 30
        while True:
            try:
                lock.check()
            except FolderLockLostError as error:
                assert "heartbeat could not be written" in str(error)
                break
            assert time.monotonic() < deadline, "the failed heartbeats were never noticed"
            time.sleep(0.05)
        while "cannot renew the lock" not in caplog.text:  # the heartbeat thread says why
            assert time.monotonic() < deadline, "no failed heartbeat was logged"
            time.sleep(0.05)
    finally:
        failing.clear()
        lock.release()


def test_a_check_during_a_heartbeat_write_does_not_lose_the_lock(tmp_path: Path) -> None:
    """A store whose writes are not atomic shows the lock object empty while the heartbeat
    rewrites it; a check that reads it then must not take that for another holder."""
    fsspec = pytest.importorskip("fsspec.implementations.local")
    import threading

    holding, truncated, released = threading.Event(), threading.Event(), threading.Event()
    lock_file = tmp_path / "out" / LOCK_NAME

    class SlowWrites(fsspec.LocalFileSystem):  # type: ignore[misc,name-defined]
        def open(self, path: str, mode: str = "rb", *args: t.Any, **kwargs: t.Any) -> t.Any:
            checking = threading.current_thread() is threading.main_thread()
            if (
                not path.endswith(LOCK_NAME)
                or not holding.is_set()
                or ("w" not in mode and not checking)
            ):
                return super().open(path, mode, *args, **kwargs)
            if "w" in mode:  # the heartbeat: the object is empty until `released`
                handle = super().open(path, mode, *args, **kwargs)
                truncated.set()
                released.wait(30)
                return handle
            seen = lock_file.read_bytes()  # a check reads it in the middle of the write
            holding.clear()
            released.set()
            deadline = time.monotonic() + 30
            while not lock_file.read_bytes() and time.monotonic() < deadline:
                time.sleep(0.01)  # until the heartbeat's write has landed
            return super().open(path, mode, *args, **kwargs) if seen else _Empty()

    class _Empty:
        def read(self, *args: t.Any) -> bytes:
            return b""

        def close(self) -> None:
            pass

        closed = False
        readable = staticmethod(lambda: True)
        seekable = staticmethod(lambda: False)

    store = pafs.PyFileSystem(pafs.FSSpecHandler(SlowWrites()))
    lock = FolderLock(store, f"{tmp_path}/out", "store://out", settle_s=0, heartbeat_s=0.02)
    lock.acquire()
    try:
        holding.set()
        assert truncated.wait(30), "no heartbeat came"
        assert lock_file.read_bytes() == b""
        lock.check()  # read empty, then again once the heartbeat has written it
        assert released.is_set()
    finally:
        holding.clear()
        released.set()
        lock.release()


# -- what the manifest pins (defect 7) ---------------------------------------------------


def test_the_manifest_pins_what_changes_an_output_and_nothing_else() -> None:
    from rig_ray.batch.run import _manifest
    from rig_ray.generator.params import GenerateParams
    from rig_ray.generator.registry import get_generator

    spec = PromptSpec(template="$topic").resolve(["topic"])

    def manifest(*identifiers: str, **params: t.Any) -> Manifest:
        members = [get_generator(i) for i in identifiers]
        options = {"params": GenerateParams(**params), "replicas": 3, "batch_size": 7}
        return _manifest(members, spec, None, options)

    base = manifest("vllm!/m,max_model_len=512", "litellm!openai/x,temperature=0.5")
    same = manifest(
        "vllm!/m,max_model_len=512,gpu_memory_utilization=0.5,enforce_eager=True",
        "litellm!openai/x,temperature=0.5,max_connections=3,min_delay_between_requests=2",
        timeout=30,
    )
    assert same.differences(base) == []
    assert manifest("vllm!/m,max_model_len=256", "litellm!openai/x,temperature=0.5").differences(
        base
    ) == ["generators"]
    assert manifest(
        "vllm!/m,max_model_len=512", "litellm!openai/x,temperature=0.5", temperature=1
    ).differences(base) == ["params"]
