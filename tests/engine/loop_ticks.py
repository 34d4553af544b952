"""How much an event loop got done while a coroutine ran: proof that an engine call does not
block the loop."""

from __future__ import annotations

import asyncio
import typing as t


async def ticks_during(work: t.Awaitable[t.Any], *, every: float = 0.01) -> int:
    """Await `work` while a task counts how often it woke up every `every` seconds."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(every)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await work
    finally:
        task.cancel()
    return ticks
