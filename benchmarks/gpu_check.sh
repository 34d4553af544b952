#!/usr/bin/env bash
# The whole GPU path in one run, on one GPU machine, in under 8 minutes:
#   1. tests/gpu: placement (TP=2 through remote(), a batch job and Serve; skipped below 2
#      GPUs), GPU memory back after unload and after an actor ends, vLLM's engine sizing;
#   2. benchmarks/generator_throughput.py: raw vLLM / transformers against the rig_ray
#      generator (SmolLM2-135M, the embedded model: it fits any GPU);
#   3. benchmarks/batch_throughput.py --gpus 1: raw vLLM, the generator, batch.run and Ray
#      Data LLM (where it runs) on one GPU, mixed lengths.
# Each step has a time limit, so one that hangs cannot take the whole budget; a step that
# fails is reported and the others still run. Usage: bash benchmarks/gpu_check.sh [python]
set -u
cd "$(dirname "$0")/.."
PY="${1:-${PYTHON:-.venv/bin/python}}"
export PYTHONPATH="${PYTHONPATH:-$PWD}"
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

step "tests/gpu" 210 "$PY" -m pytest -q -p no:cacheprovider -m "gpu" tests/gpu
step "generator_throughput" 90 "$PY" benchmarks/generator_throughput.py \
    --prompts 256 --max-tokens 64 --engines vllm,transformers
step "batch_throughput" 170 "$PY" benchmarks/batch_throughput.py \
    --gpus 1 --workload mixed --prompts 256 --repeats 1 --engine-threads 0 --timeout 160

if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all GPU checks passed"
