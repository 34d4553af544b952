"""The checks of a batch job's options that need no Ray: each refuses a value that means
nothing, naming the option, before anything starts (Ray would refuse some only once an
actor runs, with its own `SystemException`, and take others as they are)."""

from __future__ import annotations

import typing as t

from rig_ray.batch.source import open_filesystem
from rig_ray.errors import BatchInputError, InvalidGeneratorError


def check_whole(name: str, value: t.Any, error: type[Exception] = InvalidGeneratorError) -> None:
    """Refuse a count (unset: None) that is not a whole number of at least 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise error(f"{name} must be a whole number of at least 1, not {value!r}")


def check_seconds(
    name: str,
    value: t.Any,
    *,
    zero: bool = False,
    error: type[Exception] = InvalidGeneratorError,
) -> None:
    """Refuse a duration (unset: None) that is not a number of seconds above 0 (`zero`: of
    at least 0); NaN is neither, infinity is both."""
    if value is None:
        return
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not (value >= 0 if zero else value > 0):
        least = "of at least 0" if zero else "above 0"
        raise error(f"{name} must be a number of seconds {least}, not {value!r}")


def check_sizes(
    replicas: t.Any, batch_size: t.Any, max_concurrent_batches: t.Any, batch_timeout_s: t.Any
) -> None:
    """`generate`'s counts and batch timeout (unset: None), as `run` checks them too."""
    check_whole("replicas", replicas)
    check_whole("batch_size", batch_size)
    check_whole("max_concurrent_batches", max_concurrent_batches)
    check_seconds("batch_timeout_s", batch_timeout_s)


def check_apart(source: str, output: str) -> None:
    """Refuse an output folder that is the input folder: its parts would be read as input by
    the next run (one inside the input folder is skipped, see `source.input_files`)."""
    if _where(source) == _where(output):
        raise BatchInputError(
            f"the output folder {output!r} is the input folder; give the output a folder of "
            "its own (one inside the input folder will do)",
            source=source,
        )


def _where(location: str) -> str:
    """Where `location` points: a local path made absolute, a remote URI as it is written
    (opening its filesystem could cost a round trip to the store)."""
    if "://" in location and not location.startswith("file://"):
        return location.rstrip("/")
    return open_filesystem(location)[1].rstrip("/")


__all__: t.Sequence[str] = ["check_apart", "check_seconds", "check_sizes", "check_whole"]
