"""The parts of the `/v1/batches` runner that need no Ray: fair slots, leases, the window."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from rig_ray.serve.batch_lease import BatchLeases
from rig_ray.serve.batch_slots import FairSlots, SlotsClosed
from rig_ray.serve.batches import BatchStore, CreateBatch
from rig_ray.serve.files import FileStore


async def test_slots_go_to_the_waiting_batches_in_turn() -> None:
    slots = FairSlots(1)
    order: list[str] = []
    gate = asyncio.Event()

    async def one(key: str) -> None:
        async with slots.hold(key):
            order.append(key)
            await gate.wait()

    first = asyncio.create_task(one("a"))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(one("a")) for _ in range(3)]
    await asyncio.sleep(0)
    queued += [asyncio.create_task(one("b")) for _ in range(3)]
    await asyncio.sleep(0)
    assert slots.in_use == 1
    gate.set()
    await asyncio.gather(first, *queued)
    assert order == ["a", "a", "b", "a", "b", "a", "b"]
    assert slots.in_use == 0


async def test_closed_slots_refuse_the_waiting_and_the_new() -> None:
    slots = FairSlots(1)
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with slots.hold("other"):
            held.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await held.wait()

    async def waiting() -> None:
        async with slots.hold("stopped"):
            pass

    waiter = asyncio.create_task(waiting())
    await asyncio.sleep(0)
    slots.close("stopped")
    with pytest.raises(SlotsClosed):
        await waiter
    with pytest.raises(SlotsClosed):
        await waiting()
    release.set()
    await task
    slots.open("stopped")
    await waiting()
    assert slots.in_use == 0


def test_a_lease_is_taken_over_only_when_stale(tmp_path: Path) -> None:
    store = BatchStore(FileStore(str(tmp_path)))
    batch_id = "batch_" + "0" * 32
    store.filesystem.create_dir(store.folder(batch_id), recursive=True)
    one = BatchLeases(store.filesystem, store.root, lease_s=1.0, settle_s=0)
    two = BatchLeases(store.filesystem, store.root, lease_s=1.0, settle_s=0)
    assert one.claim(batch_id) and one.holds(batch_id)
    assert not two.claim(batch_id)  # a live replica's lease
    for _ in range(3):  # renewed: never stale
        time.sleep(0.4)
        assert one.renew(batch_id)
        assert not two.claim(batch_id)
    deadline = time.monotonic() + 30
    while not two.claim(batch_id):  # no renewal: stale after lease_s
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert two.holds(batch_id) and not one.holds(batch_id)
    assert not one.renew(batch_id)  # the old holder learns it lost the batch
    one.release(batch_id)  # and cannot let go of another's lease
    assert two.holds(batch_id)
    two.release(batch_id)
    assert one.claim(batch_id)  # a released lease is free at once


def test_the_completion_window_can_be_shortened(tmp_path: Path) -> None:
    files = FileStore(str(tmp_path))
    uploaded = files.create("a.jsonl", "batch", [b"{}\n"])
    request = CreateBatch(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    day = BatchStore(files).new(request)
    assert day.expires_at == day.created_at + 24 * 3600
    short = BatchStore(files, window_s=5).new(request)
    assert short.expires_at is not None and short.expires_at - short.created_at in (4, 5)
