"""Which of vLLM's CPU kernels change SmolLM2's greedy answers in bf16: one engine per setting.

Each setting runs raw `vllm.LLM` on the embedded SmolLM2 (eager, max_model_len 1024) in a
child process of its own, greedy, and asks the chat "What is the capital of France?" and the
completion "The capital of France is". The settings:

- `float32`: the control;
- `bf16`: vLLM's defaults, so on a CPU with AMX tiles the `amx` attention kernel (block size
  a multiple of 32) and sgl-kernel's AMX GEMM for weights of at most 1 MiB;
- `bf16 vec attention`: attention's `amx` kernel swapped for `vec` (the one every other
  AVX-512 CPU runs), the small GEMMs left on sgl-kernel;
- `bf16 oneDNN GEMM`: sgl-kernel's GEMM refused, so every linear layer runs oneDNN, attention
  left on `amx`;
- `bf16 both`: both of the above, as on a CPU without AMX.

(`block_size=16`, which would move attention to `vec16`, is refused by vLLM 0.32's CPU
attention: "No common block size for 16 (CPU_ATTN: [MultipleOf(32)])". The kernels are
swapped instead by a `sitecustomize` that every process of the engine runs at its start.)

    .venv/bin/python benchmarks/cpu_bf16_answers.py

On a CPU without AMX the five differ only in the dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

from common import cpu_features, machine  # beside this script, so on sys.path

CHAT = "What is the capital of France?"
COMPLETION = "The capital of France is"
SETTINGS: dict[str, tuple[str, str]] = {  # dtype, kernels swapped
    "float32": ("float32", ""),
    "bf16": ("bfloat16", ""),
    "bf16 vec attention": ("bfloat16", "attention"),
    "bf16 oneDNN GEMM": ("bfloat16", "gemm"),
    "bf16 both": ("bfloat16", "attention,gemm"),
}
SWAP_KERNELS = """
import os
swap = os.environ.get("RIG_RAY_BENCH_SWAP", "").split(",")
if "attention" in swap:
    from vllm.v1.attention.backends import cpu_attn
    amx_isa = cpu_attn._get_attn_isa
    def vec_isa(*args, **kwargs):
        isa = amx_isa(*args, **kwargs)
        return "vec" if isa == "amx" else isa
    cpu_attn._get_attn_isa = vec_isa
if "gemm" in swap:
    from vllm.model_executor.layers import utils
    utils.check_cpu_sgl_kernel = lambda n, k, dtype: False
"""


def child(dtype: str) -> None:
    from vllm import LLM, SamplingParams

    from rig_ray.embedded import embedded_model_path

    llm = LLM(
        model=str(embedded_model_path()),
        enforce_eager=True,
        max_model_len=1024,
        dtype=t.cast(t.Any, dtype),
    )
    greedy = SamplingParams(temperature=0.0, max_tokens=24)
    started = time.perf_counter()
    messages: list[t.Any] = [{"role": "user", "content": CHAT}]
    chat = llm.chat(messages, greedy, use_tqdm=False)
    completion = llm.generate([COMPLETION], greedy, use_tqdm=False)
    seconds = time.perf_counter() - started
    print(
        "RESULT "
        + json.dumps(
            {
                "chat": chat[0].outputs[0].text,
                "completion": completion[0].outputs[0].text,
                "seconds": seconds,
            }
        ),
        flush=True,
    )


def run(name: str, patch_dir: Path) -> dict[str, object]:
    dtype, swap = SETTINGS[name]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
    if swap:  # every process of the engine runs sitecustomize as it starts
        env["RIG_RAY_BENCH_SWAP"] = swap
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(patch_dir), env.get("PYTHONPATH", "")) if p
        )
    done = subprocess.run(
        [sys.executable, __file__, "--child", dtype],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT ") :]))
    tail = (done.stderr or done.stdout)[-2000:]
    raise SystemExit(f"{name}: exit {done.returncode}\n{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    features = cpu_features(("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"))
    print(f"{machine()}; CPU features: {', '.join(features)}")
    print("| setting | chat answer | completion | s for both |")
    print("|---|---|---|---:|")
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "sitecustomize.py").write_text(SWAP_KERNELS)
        for name in args.settings.split(","):
            result = run(name, Path(folder))
            chat = json.dumps(result["chat"], ensure_ascii=False)
            completion = json.dumps(result["completion"], ensure_ascii=False)
            print(f"| {name} | {chat} | {completion} | {result['seconds']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
