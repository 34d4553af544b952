"""A call's items as vLLM engine requests: each request's `SamplingParams`, runs of equal
sampled items as one request with `n`, and seeds of their own for seeded repeats."""

from __future__ import annotations

import collections
import json
import typing as t

from rig_ray.generator import structured
from rig_ray.generator.base import DEFAULT_MAX_TOKENS
from rig_ray.generator.seeds import derive_seed

if t.TYPE_CHECKING:
    from rig_ray.generator.params import GenerateParams
    from rig_ray.generator.vllm_requests import Prompt

_REMOTE_ONLY = {"api_base", "timeout"}


def sampling_params(params: GenerateParams, **engine_fields: t.Any) -> t.Any:
    from vllm import SamplingParams

    values = {k: v for k, v in params.to_dict().items() if k not in _REMOTE_ONLY}
    values.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    return SamplingParams(**structured.vllm_sampling_kwargs(values), **engine_fields)


def item_key(prompt: Prompt, params: GenerateParams) -> str:
    return json.dumps([prompt, params.model_dump(mode="json")], sort_keys=True, default=str)


def spread_seeds(keys: list[str], params: list[GenerateParams]) -> list[GenerateParams]:
    """Seeded items as they go to the engine: the k-th repeat (k >= 1) of an equal item in
    the call gets a seed derived from (seed, k), the first keeps the seed as given. A sample
    then depends on its seed and repeat index only, never on what shared the call."""
    seen: collections.Counter[str] = collections.Counter()
    spread: list[GenerateParams] = []
    for key, p in zip(keys, params, strict=True):
        repeat = seen[key]
        seen[key] += 1
        if p.seed is None or repeat == 0:
            spread.append(p)
        else:
            spread.append(p.model_copy(update={"seed": derive_seed(p.seed, repeat)}))
    return spread


def request_groups(keys: list[str], params: list[GenerateParams]) -> list[list[int]]:
    """Indices of items sent as one request: a run of equal items with sampling on and no
    seed (greedy requests cannot take n > 1; vLLM gives child i of a seeded one seed + i),
    else each item alone."""
    groups: list[list[int]] = []
    previous: str | None = None
    for index, (key, p) in enumerate(zip(keys, params, strict=True)):
        if key == previous and p.temperature != 0 and p.seed is None:
            groups[-1].append(index)
        else:
            groups.append([index])
        previous = key
    return groups
