"""Seeds that do not depend on layout: a seeded sample is a function of (seed, row id,
generation index) only, never of which other items shared its call or its engine request."""

from __future__ import annotations

import hashlib

SEED_RANGE = 2**31 - 1
"""Derived seeds stay below this, so every engine (torch, numpy, vLLM) takes them."""


def derive_seed(seed: int, *parts: object) -> int:
    """A seed for one sample, made from the user's `seed` and what names the sample (a row id,
    a generation index); the same inputs always give the same seed."""
    text = "\x1f".join(repr(part) for part in (seed, *parts))
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SEED_RANGE
