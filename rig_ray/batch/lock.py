"""One run per output folder: `FolderLock`, held for a batch run's whole life.

A local folder is locked with an OS file lock (`flock`) on `_rig_ray.lock`, opened without
following links, which the kernel lets go of when the process ends however it ends. An object
store has no such lock, so there the lock is an object holding the holder's host, pid, a
token and a beat counter that a thread rewrites every `heartbeat_s`. A lock counts as stale
(its run died) when the store's own modification time of it is `stale_after_s` older than
that of a probe object written just now (the store's clock against itself), or, on a store
without modification times, when its beat counter does not move for `stale_after_s`. A run
calls `check()` before each part it writes: it raises `FolderLockLostError` when another run
has taken the lock over, or when the heartbeat could not be written for half of
`stale_after_s`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
import typing as t
import uuid

import pyarrow.fs as pafs

from rig_ray.errors import BatchInputError, FolderLockLostError

logger = logging.getLogger(__name__)

LOCK_NAME = "_rig_ray.lock"
STALE_AFTER_S = 300.0
"""An object-store lock not rewritten for this long belongs to a run that died."""
HEARTBEAT_S = 30.0
"""How often a run renews its object-store lock."""
UNREADABLE_TRIES = 3
"""How many times a check reads a lock object that reads as missing or empty."""


class FolderLock:
    """An exclusive lock on an output folder; `acquire` fails fast, naming the holder."""

    def __init__(
        self,
        filesystem: pafs.FileSystem,
        path: str,
        location: str,
        *,
        stale_after_s: float = STALE_AFTER_S,
        heartbeat_s: float = HEARTBEAT_S,
        settle_s: float = 1.0,
    ) -> None:
        self._filesystem = filesystem
        self._folder = path
        self._path = f"{path}/{LOCK_NAME}"
        self._location = location
        self._stale_after_s = stale_after_s
        self._heartbeat_s = heartbeat_s
        self._settle_s = settle_s
        self._local = isinstance(filesystem, pafs.LocalFileSystem)
        self._fd: int | None = None
        self._created_folder = False
        self._token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._beats = 0
        self._last_written = 0.0  # time.monotonic() of the last heartbeat written
        self._lost: str | None = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, creating the folder if needed; `BatchInputError` if another run has it."""
        if self._filesystem.get_file_info(self._folder).type == pafs.FileType.NotFound:
            self._filesystem.create_dir(self._folder, recursive=True)
            self._created_folder = True
        if self._local:
            self._acquire_local()
        else:
            self._acquire_object()

    def release(self) -> None:
        """Let go of the lock (and remove the folder if this run created it and left it empty)."""
        if self._local and self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)
            os.close(self._fd)
            self._fd = None
        elif not self._local and self._beat is not None:
            self._stop.set()
            self._beat.join()
            self._beat = None
            if (self._read() or {}).get("token") == self._token:
                with contextlib.suppress(OSError):
                    self._filesystem.delete_file(self._path)
        if self._created_folder:
            with contextlib.suppress(OSError):
                listing = self._filesystem.get_file_info(pafs.FileSelector(self._folder))
                if not listing:
                    self._filesystem.delete_dir(self._folder)

    def _acquire_local(self) -> None:
        import fcntl

        while True:
            fd = self._open_local()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(_read_fd(fd))
                os.close(fd)
                raise self._busy(holder) from None
            except OSError as error:  # ENOLCK, ENOSYS, EOPNOTSUPP: no locks on this filesystem
                os.close(fd)
                raise BatchInputError(
                    f"cannot lock {self._path!r}: the filesystem of the output folder "
                    f"{self._location!r} does not support file locks "
                    f"({errno.errorcode.get(error.errno or 0, error.errno)}: {error.strerror}); "
                    "write to a local disk, then copy",
                    source=self._location,
                ) from None
            try:  # the holder before us may have removed the file as we opened it
                same = os.fstat(fd).st_ino == os.lstat(self._path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(self._holder()).encode())
        self._fd = fd

    def _open_local(self) -> int:
        """The lock file, created if missing; never opened through a symbolic link."""
        try:
            return os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            raise BatchInputError(
                f"{self._path!r} is a symbolic link; a batch run never writes through one "
                "(remove it to use this output folder)",
                source=self._location,
            ) from None

    def check(self) -> None:
        """Raise `FolderLockLostError` unless this run still holds the lock (an object
        store's is read back; a local `flock` holds as long as this process does)."""
        if self._local:
            return
        if self._lost is None:
            silent = time.monotonic() - self._last_written
            if silent > self._stale_after_s / 2:
                self._lost = f"its heartbeat could not be written for {silent:.0f}s"
            else:
                current = self._read_settled()
                if current is None or current.get("token") != self._token:
                    self._lost = f"another run took it over ({_describe(current)})"
        if self._lost is not None:
            raise FolderLockLostError(
                f"this run lost the lock on the output folder {self._location!r}: "
                f"{self._lost}; it stopped before writing more (what it wrote is kept)",
                location=self._location,
            )

    def _acquire_object(self) -> None:
        current = self._read()
        if current is not None and not self._stale(current):
            raise self._busy(_describe(current))
        self._write()
        time.sleep(self._settle_s)  # a run that wrote at the same moment: the last write wins
        current = self._read()
        if current is None or current.get("token") != self._token:
            raise self._busy(_describe(current))
        self._beat = threading.Thread(target=self._heartbeat, name="rig_ray-lock", daemon=True)
        self._beat.start()

    def _stale(self, current: dict[str, t.Any]) -> bool:
        """Whether the lock object `current` belongs to a run that died (see the module)."""
        written = self._filesystem.get_file_info(self._path).mtime
        now = self._store_now()
        if written is not None and now is not None:
            return (now - written).total_seconds() > self._stale_after_s
        # no modification times: watch the holder's beat counter on our own clock
        seen = (current.get("token"), current.get("beats"))
        deadline = time.monotonic() + self._stale_after_s
        while time.monotonic() < deadline:
            time.sleep(min(self._heartbeat_s, max(deadline - time.monotonic(), 0)))
            later = self._read()
            if later is None or (later.get("token"), later.get("beats")) != seen:
                return later is None
        return True

    def _store_now(self) -> t.Any:
        """The store's own clock: the modification time of a probe object written now."""
        probe = f"{self._folder}/.{LOCK_NAME}-probe-{self._token}"
        try:
            with self._filesystem.open_output_stream(probe) as out:
                out.write(b"")
            return self._filesystem.get_file_info(probe).mtime
        except OSError:
            return None
        finally:
            with contextlib.suppress(OSError):
                self._filesystem.delete_file(probe)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            current = self._read()
            if current is not None and current.get("token") != self._token:
                self._lost = f"another run took it over ({_describe(current)})"
                return  # never overwrite the new holder
            try:
                self._write()
            except OSError as error:  # retried next beat; `check` stops the run if it lasts
                logger.warning(
                    "cannot renew the lock on %s: %s", self._location, " ".join(str(error).split())
                )

    def _holder(self) -> dict[str, t.Any]:
        now = time.time()
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": self._token,
            "started": getattr(self, "_started", now),
            "beats": self._beats,
        }

    def _write(self) -> None:
        self._beats += 1
        holder = self._holder()
        self._started = holder["started"]
        with self._filesystem.open_output_stream(self._path) as out:
            out.write(json.dumps(holder).encode())
        self._last_written = time.monotonic()

    def _read_settled(self) -> dict[str, t.Any] | None:
        """The lock object, read again where it reads as missing or empty: a store whose
        writes are not atomic shows an empty object while this run's heartbeat rewrites it."""
        for _ in range(UNREADABLE_TRIES - 1):
            current = self._read()
            if current:
                return current
            time.sleep(min(self._heartbeat_s, 0.2))
        return self._read()

    def _read(self) -> dict[str, t.Any] | None:
        try:
            with self._filesystem.open_input_stream(self._path) as stream:
                value = json.loads(stream.read() or b"{}")
        except (FileNotFoundError, OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def _busy(self, holder: str) -> BatchInputError:
        return BatchInputError(
            f"output folder {self._location!r} is in use by another run ({holder}); wait for "
            "it to end or give another output folder",
            source=self._location,
        )


def _read_fd(fd: int) -> dict[str, t.Any] | None:
    try:
        value = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _describe(holder: dict[str, t.Any] | None) -> str:
    if not holder or "pid" not in holder:
        return "holder unknown"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("started", 0)))
    return f"pid {holder['pid']} on host {holder.get('host', '?')}, since {started}"
