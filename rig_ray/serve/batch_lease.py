"""`BatchLeases`: which ingress replica runs a batch, on any pyarrow filesystem.

A batch is run by the replica that holds its lease: `<storage>/batches/<id>/lease.json`,
holding the owner's token. The owner renews it every `lease_s / 3`; a lease not renewed for
`lease_s` belongs to a replica that is gone, and another one may take it over. Its age is
read on the store's own clock (the lease's modification time against that of a probe written
now), so replicas on hosts whose clocks differ agree; a store without modification times falls
back to the time written in the lease. Two replicas that claim at the same moment both write,
wait `settle_s`, and read back: only the one whose token stayed goes on.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import typing as t

if t.TYPE_CHECKING:
    import pyarrow.fs as pafs

DEFAULT_LEASE_S = 30.0
"""Seconds without renewal after which a batch's lease counts as abandoned."""
LEASE_FILE = "lease.json"


class BatchLeases:
    """The leases of the batches under `root` (`<storage>/batches`), held as `owner`."""

    def __init__(
        self,
        filesystem: pafs.FileSystem,
        root: str,
        *,
        owner: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        settle_s: float = 0.2,
    ) -> None:
        if not lease_s > 0:
            raise ValueError("lease_s must be > 0")
        self.filesystem, self.root = filesystem, root
        self.owner = owner or secrets.token_hex(8)
        self.lease_s = lease_s
        self.settle_s = settle_s

    def claim(self, batch_id: str) -> bool:
        """Take the batch's lease if it is free, stale or already ours."""
        current = self._read(batch_id)
        theirs = current is not None and current.get("owner") != self.owner
        if theirs and not self._stale(batch_id, t.cast(dict[str, t.Any], current)):
            return False
        self._write(batch_id)
        time.sleep(self.settle_s)  # a replica that wrote at the same moment: the last one wins
        return self.holds(batch_id)

    def renew(self, batch_id: str) -> bool:
        """Renew our lease; False when another replica holds it now (we lost it)."""
        if not self.holds(batch_id):
            return False
        self._write(batch_id)
        return True

    def holds(self, batch_id: str) -> bool:
        current = self._read(batch_id)
        return current is not None and current.get("owner") == self.owner

    def release(self, batch_id: str) -> None:
        """Let go of our lease, so that another replica may take the batch up at once."""
        if self.holds(batch_id):
            with contextlib.suppress(OSError):
                self.filesystem.delete_file(self._path(batch_id))

    def _path(self, batch_id: str) -> str:
        return f"{self.root}/{batch_id}/{LEASE_FILE}"

    def _write(self, batch_id: str) -> None:
        body = json.dumps({"owner": self.owner, "renewed": time.time()}).encode()
        with self.filesystem.open_output_stream(self._path(batch_id)) as stream:
            stream.write(body)

    def _read(self, batch_id: str) -> dict[str, t.Any] | None:
        try:
            with self.filesystem.open_input_stream(self._path(batch_id)) as stream:
                value = json.loads(stream.read() or b"{}")
        except (FileNotFoundError, OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def _stale(self, batch_id: str, current: dict[str, t.Any]) -> bool:
        written = self.filesystem.get_file_info(self._path(batch_id)).mtime
        now = self._store_now(batch_id)
        if written is not None and now is not None:
            return (now - written).total_seconds() > self.lease_s
        return time.time() - float(current.get("renewed", 0)) > self.lease_s

    def _store_now(self, batch_id: str) -> t.Any:
        """The store's clock: the modification time of a probe written now."""
        probe = f"{self.root}/{batch_id}/.lease-probe-{secrets.token_hex(6)}"
        try:
            with self.filesystem.open_output_stream(probe) as stream:
                stream.write(b"")
            return self.filesystem.get_file_info(probe).mtime
        except OSError:
            return None
        finally:
            with contextlib.suppress(OSError):
                self.filesystem.delete_file(probe)
