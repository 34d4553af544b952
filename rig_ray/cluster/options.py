"""What a generator's actor is started from: its config payload and its Ray options."""

from __future__ import annotations

import sys
import typing as t

from rig_ray.generator.base import Generator
from rig_ray.generator.registry import registered_providers


def _by_value_modules(classes: t.Iterable[type]) -> set[str]:
    """Modules whose Generator subclasses must travel by value (anything outside rig_ray)."""
    names: set[str] = set()
    for cls in classes:
        for base in cls.__mro__:
            if base is Generator:
                break
            name = base.__module__
            if name != "__main__" and not name.startswith("rig_ray") and name in sys.modules:
                names.add(name)
    return names


def config_payload(generator: Generator) -> bytes:
    """The generator's config and the driver's provider table, with custom classes by value.

    Pickling a generator pickles its settings only (`Generator.__reduce__`); classes from
    modules outside rig_ray are pickled by value, so a class from a test file or a notebook
    works in an actor where its module cannot be imported.
    """
    from ray import cloudpickle

    providers = registered_providers()
    modules = _by_value_modules([type(generator), *providers.values()])
    added = [name for name in modules if name not in cloudpickle.list_registry_pickle_by_value()]
    for name in added:
        cloudpickle.register_pickle_by_value(sys.modules[name])
    try:
        return t.cast(bytes, cloudpickle.dumps((generator, providers)))
    finally:
        for name in added:
            cloudpickle.unregister_pickle_by_value(sys.modules[name])


def restore_payload(payload: bytes) -> Generator:
    """The generator of a `config_payload`, with the driver's providers registered here too."""
    from ray import cloudpickle

    from rig_ray.generator.registry import register_generator

    generator, providers = cloudpickle.loads(payload)
    for name, generator_cls in providers.items():
        register_generator(name, generator_cls)
    return t.cast(Generator, generator)


def actor_options(
    *,
    num_cpus: float,
    num_gpus: float,
    resources: dict[str, float] | None,
    accelerator_type: str | None,
    max_restarts: int,
    max_task_retries: int,
    name: str | None,
    tensor_parallel_size: int = 1,
) -> tuple[dict[str, t.Any], list[dict[str, float]] | None]:
    """Ray options for the actor, and the placement group bundles it needs (None: no group).

    With `tensor_parallel_size > 1` the group holds one GPU bundle per shard, packed on one
    node; the actor itself takes no resources, and the engine's workers take the bundles.
    """
    options: dict[str, t.Any] = {"max_restarts": max_restarts, "max_task_retries": max_task_retries}
    if name is not None:
        options["name"] = name
    if tensor_parallel_size <= 1:
        options.update(num_cpus=num_cpus, num_gpus=num_gpus)
        if resources:
            options["resources"] = dict(resources)
        if accelerator_type:
            options["accelerator_type"] = accelerator_type
        return options, None
    bundle: dict[str, float] = {"GPU": 1, "CPU": num_cpus}
    if accelerator_type:
        bundle[f"accelerator_type:{accelerator_type}"] = 0.001
    bundles = [dict(bundle) for _ in range(tensor_parallel_size)]
    bundles[0].update(resources or {})
    options.update(num_cpus=0, num_gpus=0)
    if resources:
        options["resources"] = dict(resources)
    return options, bundles
