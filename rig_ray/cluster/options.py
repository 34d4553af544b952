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
