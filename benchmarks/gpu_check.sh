#!/usr/bin/env bash
# The whole GPU path in one run, on one GPU machine, in under 8 minutes:
#   1. tests/gpu: placement (TP=2 through remote(), a batch job and Serve; skipped below 2
#      GPUs), GPU memory back after unload and after an actor ends, vLLM's engine sizing;
#   2. benchmarks/generator_throughput.py: raw vLLM / transformers against the rig_ray
#      generator (SmolLM2-135M, the embedded model: it fits any GPU);
#   3. benchmarks/batch_throughput.py --gpus 1: raw vLLM, the generator, batch.run and Ray
#      Data LLM (where it runs) on one GPU, mixed lengths.
# Each step has a time limit, so one that hangs cannot take the whole budget; a step that
# fails is reported and the others still run (a benchmark side that fails fails its step).
# Usage: bash benchmarks/gpu_check.sh [python], where python has rig_ray installed with CUDA
# builds of torch and vLLM (pip install -e ".[transformers,vllm,dev]"; `make install` makes
# the CPU venv, which this script refuses).
set -u
cd "$(dirname "$0")/.."
PY="${1:-${PYTHON:-.venv/bin/python}}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0
failed=()

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== ${name} (limit ${limit}s)"
    local started=$SECONDS
    if ! timeout --kill-after=10 "$limit" "$@"; then
        failed+=("$name")
    fi
    echo "=== ${name}: $((SECONDS - started))s"
}

"$PY" - <<'PY' || { echo "no CUDA GPU here: nothing to check"; exit 1; }
import torch
assert torch.cuda.is_available()
print(f"GPUs: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
PY

step "tests/gpu" 180 "$PY" -m pytest -q -p no:cacheprovider -m "gpu" tests/gpu
step "generator_throughput" 70 "$PY" benchmarks/generator_throughput.py \
    --prompts 128 --max-tokens 64 --engines vllm,transformers
# raw vLLM (a), batch.run (c) and Ray Data LLM (d), each a process of its own that starts
# an engine: a side's limit, and the step's for the three
step "batch_throughput" 220 "$PY" benchmarks/batch_throughput.py --sides acd \
    --gpus 1 --workload mixed --prompts 128 --repeats 1 --engine-threads 0 --timeout 70

if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all GPU checks passed"
