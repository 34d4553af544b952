"""Ray placement groups for placements with bundles (an engine over several GPUs): the group
of one actor (`make_group`, `in_group`), those of a Ray Data actor pool (`BatchGroups`), and
each Serve replica's (`serve_options`). Nothing here imports Ray until a group is made."""

from __future__ import annotations

import contextlib
import threading
import typing as t

from rig_ray.cluster.placement import STRATEGY, Placement


def make_group(placement: Placement) -> t.Any:
    """A placement group for `placement`'s bundles (None when it has none)."""
    bundles = placement.group_bundles()
    if bundles is None:
        return None
    import ray

    return ray.util.placement_group(bundles, strategy=STRATEGY)


def in_group(group: t.Any) -> dict[str, t.Any]:
    """The options that start an actor in `group`, its engine's workers with it."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            group, placement_group_capture_child_tasks=True
        )
    }


def serve_options(placement: Placement) -> dict[str, t.Any]:
    """A Serve deployment's placement options: `ray_actor_options` resources, and the bundles
    of each replica (the replica runs in the first bundle)."""
    options: dict[str, t.Any] = {"ray_actor_options": placement.ray_options()}
    bundles = placement.group_bundles()
    if bundles is not None:
        options["placement_group_bundles"] = bundles
        options["placement_group_strategy"] = STRATEGY
    return options


class BatchGroups:
    """`ray_remote_args_fn` of a Ray Data actor pool: a placement group per actor it starts.

    Groups made while a `BatchGroups.scope()` is open in the thread that built the dataset
    are removed when it closes (`batch.run` opens one around its job); others stay until the
    driver exits, as Ray removes a job's groups then.
    """

    _made: t.ClassVar[dict[int, list[t.Any]]] = {}
    _lock: t.ClassVar[threading.Lock] = threading.Lock()
    _current: t.ClassVar[threading.local] = threading.local()
    _next: t.ClassVar[list[int]] = [0]

    def __init__(self, placement: Placement) -> None:
        self._placement = placement
        self._scope: int | None = getattr(BatchGroups._current, "scope", None)

    def __call__(self) -> dict[str, t.Any]:
        group = make_group(self._placement)
        if self._scope is not None:
            with BatchGroups._lock:
                BatchGroups._made.setdefault(self._scope, []).append(group)
        return in_group(group)

    @classmethod
    @contextlib.contextmanager
    def scope(cls) -> t.Iterator[None]:
        """Remove, on leaving, the groups of the actor pools built meanwhile in this thread."""
        with cls._lock:
            cls._next[0] += 1
            key = cls._next[0]
        outer = getattr(cls._current, "scope", None)
        cls._current.scope = key
        try:
            yield
        finally:
            cls._current.scope = outer
            with cls._lock:
                groups = cls._made.pop(key, [])
            if groups:
                import ray

                for group in groups:
                    with contextlib.suppress(Exception):  # already gone with its job
                        ray.util.remove_placement_group(group)


__all__: t.Sequence[str] = ["BatchGroups", "in_group", "make_group", "serve_options"]
