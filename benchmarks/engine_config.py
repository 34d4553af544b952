"""The scheduler sizes and dtype that rig_ray's generator, `vllm.LLM` and `vllm serve` settle on
on this machine, side by side.

rig_ray's column is read from a real engine (one start: `VLLMGenerator.load()`), unless
`--no-engine`. The others come from vLLM's own config code on the same engine arguments, in
the usage context each entry point starts with (`EngineArgs.create_engine_config`, as
`vllm.LLM.__init__` and `vllm serve` call it): `LLM_CLASS` for `vllm.LLM`, `OPENAI_API_SERVER`
for `vllm serve`. rig_ray starts generators, batch jobs and `remote()` in the first context
and Serve replicas in the second, so each pair of columns should agree. The driver's estimate
(`rig_ray.generator.vllm_sizing`, from vLLM's default table without any config) is shown too.

    flock /tmp/vllm.lock .venv/bin/python benchmarks/engine_config.py
"""

from __future__ import annotations

import argparse
import os
import typing as t

from common import machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def settled(path: str, kwargs: dict[str, t.Any], context: str) -> dict[str, t.Any]:
    """What vLLM's own config code gives an engine of these arguments in `context`."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    from rig_ray.generator import vllm_sizing

    config = AsyncEngineArgs(model=path, **kwargs).create_engine_config(
        vllm_sizing.usage_context(t.cast(vllm_sizing.UsageName, context))
    )
    return {
        "max_num_seqs": config.scheduler_config.max_num_seqs,
        "max_num_batched_tokens": config.scheduler_config.max_num_batched_tokens,
        "dtype": str(config.model_config.dtype).removeprefix("torch."),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--no-engine", action="store_true", help="start no engine")
    args = parser.parse_args()

    from vllm.platforms import current_platform

    import rig_ray as rr
    from rig_ray.embedded import resolve_model
    from rig_ray.generator import vllm_sizing
    from rig_ray.generator.vllm_engine_args import engine_kwargs

    generator = rr.VLLMGenerator(
        model=args.model, enforce_eager=True, max_model_len=args.max_model_len
    )
    path = resolve_model(generator.model)
    kwargs = engine_kwargs(generator, path, current_platform.is_cpu())
    columns: dict[str, dict[str, t.Any]] = {}
    if not args.no_engine:
        generator.load()
        try:
            engine = generator._engine
            scheduler = engine.vllm_config.scheduler_config
            columns["rig_ray generator (engine)"] = {
                "max_num_seqs": scheduler.max_num_seqs,
                "max_num_batched_tokens": scheduler.max_num_batched_tokens,
                "dtype": str(engine.model_config.dtype).removeprefix("torch."),
            }
        finally:
            generator.unload()
    columns["vllm.LLM (LLM_CLASS)"] = settled(path, kwargs, vllm_sizing.OFFLINE)
    columns["vllm serve (OPENAI_API_SERVER)"] = settled(path, kwargs, vllm_sizing.SERVER)
    columns["rig_ray driver estimate, batch / serve"] = {
        "max_num_seqs": f"{vllm_sizing.default_max_num_seqs(kwargs, vllm_sizing.OFFLINE)} / "
        f"{vllm_sizing.default_max_num_seqs(kwargs, vllm_sizing.SERVER)}",
        "max_num_batched_tokens": "",
        "dtype": "",
    }
    print(f"model {args.model} ({path}), max_model_len {args.max_model_len}, eager")
    print(f"engine arguments (as rig_ray passes them): {kwargs}")
    print(f"platform: {current_platform.device_name}; machine: {machine()}\n")
    names = list(columns)
    print("| setting | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for field in ("max_num_seqs", "max_num_batched_tokens", "dtype"):
        print(f"| {field} | " + " | ".join(str(columns[n][field]) for n in names) + " |")


if __name__ == "__main__":
    main()
