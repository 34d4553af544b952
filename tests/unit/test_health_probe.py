"""The replica's health probe: a failed probe keeps the check failing until the engine
answers again, as Serve replaces a replica only after failed checks in a row."""

from __future__ import annotations

import asyncio

import pytest

from rig_ray.serve.health import HealthProbe


class Engine:
    """A probe target whose answers the test decides: each probe waits for the next."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[BaseException | None] = asyncio.Queue()
        self.probes = 0

    async def probe(self) -> None:
        self.probes += 1
        reply = await self.replies.get()
        if reply is not None:
            raise reply


async def settle(probe: HealthProbe) -> None:
    """Let the running probe take its reply and end."""
    task = probe._task
    assert task is not None
    await asyncio.wait({task})


async def test_a_failed_probe_fails_every_check_until_an_answer() -> None:
    engine = Engine()
    probe = HealthProbe(engine.probe, interval_s=0, timeout_s=3600)
    probe.check()  # due at once: a probe starts
    for _ in range(3):  # a dead engine: every probe fails, and so does every check
        engine.replies.put_nowait(RuntimeError("engine dead"))
        await settle(probe)
        with pytest.raises(RuntimeError, match=r"probe's generation failed.*engine dead"):
            probe.check()  # ... and a new probe has started
    await asyncio.sleep(0)  # the probe started by the last check runs
    assert engine.probes == 4
    engine.replies.put_nowait(None)  # it answers again
    await settle(probe)
    probe.check()
    probe.close()


async def test_a_real_answer_clears_a_failed_probe() -> None:
    engine = Engine()
    probe = HealthProbe(engine.probe, interval_s=3600, timeout_s=3600)
    probe._last_answer -= 3600  # a probe is due
    probe.check()
    engine.replies.put_nowait(RuntimeError("one bad call"))
    await settle(probe)
    with pytest.raises(RuntimeError, match="one bad call"):
        probe.check()
    probe.answered()  # a request's generate call finished meanwhile
    engine.replies.put_nowait(None)
    await settle(probe)
    probe.check()
    probe.check()  # passes, and starts no probe: the engine answered just now
    assert engine.probes == 2
    probe.close()


async def test_a_probe_left_unanswered_fails_the_check_once_its_time_is_up() -> None:
    engine = Engine()
    probe = HealthProbe(engine.probe, interval_s=0, timeout_s=3600)
    probe.check()
    probe.check()  # running, within its time
    probe.timeout_s = 0
    probe._started -= 1
    probe._last_answer -= 1
    with pytest.raises(RuntimeError, match="has not answered a one-token generation"):
        probe.check()
    probe.close()


async def test_a_replica_whose_engine_died_fails_its_health_check() -> None:
    from pydantic import PrivateAttr

    from rig_ray.serve.deployment import GeneratorDeployment
    from tests.fakes import EchoGenerator

    class DiedEngine(EchoGenerator):
        _dead: bool = PrivateAttr(False)

        @property
        def engine_died(self) -> bool:
            return self._dead

    replica = GeneratorDeployment.func_or_class.__new__(GeneratorDeployment.func_or_class)
    replica._generator, replica._name, replica._health = DiedEngine(model="d"), "d", None
    await replica.check_health()
    replica._generator._dead = True
    with pytest.raises(RuntimeError, match="the engine of model 'd' died"):
        await replica.check_health()
