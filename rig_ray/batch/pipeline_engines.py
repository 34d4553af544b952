"""A pipeline stage's engines: generator actors of its own, loaded and unloaded explicitly.

The stage's `batch.run` gets `RemoteGenerator` handles on these actors, so its Ray Data
actors are thin: the engines live here, from `load()` to `unload()`, whatever Ray Data does.
`unload()` releases every engine, ends the actors and waits until their processes (and the
engines' own processes under them) are gone, so the resources are free when it returns.
"""

from __future__ import annotations

import contextlib
import logging
import time
import typing as t

from pydantic import BaseModel, ConfigDict, PrivateAttr

from rig_ray.batch.pipeline_stage import Stage
from rig_ray.cluster.placement import Placement, place, refuse_what_the_cluster_cannot_hold
from rig_ray.cluster.remote_generator import TEARDOWN_UNLOAD_S, RemoteGenerator
from rig_ray.generator.base import Generator, Messages
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.registry import get_generator

PROCESS_EXIT_WAIT_S = 60.0
"""How long `unload` waits for an ended actor's processes to exit."""
UNLOAD_WAIT_S = 180.0
"""How long `unload` waits for the engines to unload before it ends their actors anyway
(a call they still run, left behind by Ray Data actors that ended, or a hung engine)."""

logger = logging.getLogger(__name__)


class EngineTimes(BaseModel):
    """When a stage's engines loaded and unloaded (epoch seconds; None: did not happen), and
    the pids of their actors and of the processes under them."""

    model_config = ConfigDict(extra="forbid")

    load_started: float | None = None
    load_finished: float | None = None
    unload_started: float | None = None
    unload_finished: float | None = None
    actor_pids: list[int] = []
    engine_pids: list[int] = []

    @property
    def load_s(self) -> float:
        if self.load_started is None or self.load_finished is None:
            return 0.0
        return self.load_finished - self.load_started

    @property
    def unload_s(self) -> float:
        if self.unload_started is None or self.unload_finished is None:
            return 0.0
        return self.unload_finished - self.unload_started


class Replicas(RemoteGenerator):
    """The handle a stage's `batch.run` gets on one generator's actors (one per replica):
    calls go round them in turn. The pipeline owns the engines: `unload()` here is a no-op
    (a batch actor that ends unloads its generator; these engines outlive it)."""

    _members: list[RemoteGenerator] = PrivateAttr(default_factory=list)
    _next: int = PrivateAttr(0)

    @classmethod
    def of(cls, remotes: list[RemoteGenerator]) -> Replicas:
        first = remotes[0]
        spread = t.cast(Replicas, cls.attach(first.inner, first._handle, first._group))
        spread._members = list(remotes)
        spread._next = 0
        return spread

    def __reduce__(self) -> tuple[t.Any, ...]:
        return (Replicas.of, (self._members,))

    def __copy__(self) -> Replicas:
        return Replicas.of(self._members)

    def load(self) -> t.Self:
        for member in self._members:
            member.load()
        return self

    def unload(self) -> t.Self:
        return self  # `StageEngines.unload` unloads the engines, once the stage is done

    def _turn(self) -> RemoteGenerator:
        member = self._members[self._next % len(self._members)]
        self._next += 1
        return member

    async def generate_messages(
        self, messages: Messages, params: t.Sequence[GenerateParams]
    ) -> t.Sequence[t.Any]:
        return await self._turn().generate_messages(messages, params)

    async def generate_texts(
        self, texts: t.Sequence[str], params: t.Sequence[GenerateParams]
    ) -> t.Sequence[t.Any]:
        return await self._turn().generate_texts(texts, params)


class StageEngines:
    """The actors of one stage: `replicas` per generator, `num_cpus` / `num_gpus` each."""

    def __init__(self, stage: Stage, num_cpus: float) -> None:
        self.stage = stage
        self.num_cpus = num_cpus
        self.times = EngineTimes()
        self._members: list[list[RemoteGenerator]] = []

    @property
    def actors(self) -> int:
        return len(self.stage.members) * self.stage.replicas

    def configs(self) -> list[Generator]:
        """The stage's generators, identifiers read."""
        return [get_generator(m) if isinstance(m, str) else m for m in self.stage.members]

    def placements(self) -> list[tuple[Placement, int]]:
        """Where each generator's actors run, and how many of them there are."""
        return [
            (
                place(config, num_gpus=self.stage.num_gpus, num_cpus=self.num_cpus),
                self.stage.replicas,
            )
            for config in self.configs()
        ]

    def start(self) -> None:
        """Start the actors (unloaded)."""
        from rig_ray.cluster.actor import remote

        for config in self.configs():
            self._members.append(
                [
                    remote(
                        config,
                        num_cpus=self.num_cpus,
                        num_gpus=self.stage.num_gpus,
                        max_restarts=self.stage.max_restarts,
                    )
                    for _ in range(self.stage.replicas)
                ]
            )

    def load(self) -> None:
        """Load every engine, all at once (engines on shares of one GPU take turns, see
        `rig_ray.cluster.gpu_turns`); returns when all are loaded."""
        import ray

        if not self._members:
            self.start()
        self.times.load_started = time.time()
        every = [remote for member in self._members for remote in member]
        ray.get([remote.actor.load.remote() for remote in every])
        self.times.load_finished = time.time()
        infos = ray.get([remote.actor.info.remote() for remote in every])
        here = ray.get_runtime_context().get_node_id()  # pids are looked at on this machine
        self.times.actor_pids = [int(i["pid"]) for i in infos if i["node_id"] == here]
        self.times.engine_pids = _children(self.times.actor_pids)

    def handles(self) -> list[Generator]:
        """One generator per member for `batch.run`: its actor, or its replicas in turn."""
        return [Replicas.of(member) for member in self._members]

    def unload(self) -> None:
        """Unload every engine, end the actors and wait for their processes to exit."""
        import ray
        from ray.exceptions import GetTimeoutError

        if not self._members:
            return
        self.times.unload_started = time.time()
        every = [remote for member in self._members for remote in member]
        unloaded = False
        try:
            ray.get([remote.actor.unload.remote() for remote in every], timeout=UNLOAD_WAIT_S)
            unloaded = True
        except GetTimeoutError:
            logger.warning(
                "the stage %r's engines did not unload in %.0fs; their actors are ended",
                self.stage.name,
                UNLOAD_WAIT_S,
            )
        except Exception:  # an actor that died has nothing loaded
            unloaded = True
        for remote in every:  # unloads what is left first, unless that hung already
            remote.teardown(unload_timeout_s=TEARDOWN_UNLOAD_S if unloaded else 0)
        _await_exit([*self.times.actor_pids, *self.times.engine_pids])
        self._members = []
        self.times.unload_finished = time.time()


def _children(pids: list[int]) -> list[int]:
    """The processes under `pids` on this machine (an engine's own workers)."""
    try:
        import psutil
    except ImportError:
        return []
    found: list[int] = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found.extend(child.pid for child in psutil.Process(pid).children(recursive=True))
    return found


def _await_exit(pids: list[int]) -> None:
    """Wait until the processes `pids` (those on this machine) have exited."""
    try:
        import psutil
    except ImportError:
        return
    deadline = time.monotonic() + PROCESS_EXIT_WAIT_S
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))


def refuse_what_cannot_load_at_once(engines: t.Sequence[StageEngines]) -> None:
    """A PlacementError, naming the stages, where these stages' engines cannot all hold
    their GPUs at once on a cluster that cannot grow (it would wait forever)."""
    names = ", ".join(repr(e.stage.name) for e in engines)
    wanted = [p for e in engines for p in e.placements()]
    if len(engines) == 1:
        what, hint = f"the stage {names}", ""
    else:
        what, hint = (
            f"the stages {names}, running at once,",
            "; gpu_sharing='swap' runs the stages in turn",
        )
    refuse_what_the_cluster_cannot_hold(wanted, what, hint)
