"""Seeds that do not depend on layout: a seeded sample is a function of (seed, row id,
generation index) only, never of which other items shared its call or its engine request;
or, for a request (an OpenAI batch line), of (seed, generation index), as the endpoint seeds
the choices of one request."""

from __future__ import annotations

import hashlib
import typing as t

if t.TYPE_CHECKING:
    from rig_ray.generator.params import GenerateParams

SEED_RANGE = 2**31 - 1
"""Derived seeds stay below this, so every engine (torch, numpy, vLLM) takes them."""


def derive_seed(seed: int, *parts: object) -> int:
    """A seed for one sample, made from the user's `seed` and what names the sample (a row id,
    a generation index); the same inputs always give the same seed."""
    text = "\x1f".join(repr(part) for part in (seed, *parts))
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SEED_RANGE


def for_sample(params: GenerateParams, row_id: str, generation_index: int) -> GenerateParams:
    """`params` for one sample of a row: a set seed becomes the seed of (seed, row id,
    generation index), so the row gives the same text alone, in any batch, or resumed."""
    if params.seed is None:
        return params
    return params.model_copy(update={"seed": derive_seed(params.seed, row_id, generation_index)})


def for_request_sample(params: GenerateParams, generation_index: int) -> GenerateParams:
    """`params` for one sample of a request, as the endpoint seeds the `n` choices of one:
    the first takes the seed as given, choice k (k >= 1) the seed of (seed, k). An OpenAI
    batch line then gives what the same request to the endpoint gives."""
    if params.seed is None or generation_index == 0:
        return params
    return params.model_copy(update={"seed": derive_seed(params.seed, generation_index)})
