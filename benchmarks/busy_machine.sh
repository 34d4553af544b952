#!/bin/bash
# A `rig-ray batch` job (the demo's: 16 prompts, SmolLM2 through transformers, 48 tokens)
# beside two busy loops at niceness 0, with Ray's workers at Ray's default niceness (15) and
# at the job's own (what rig-ray gives them on a Ray of its own). Run from the repository root:
#     benchmarks/busy_machine.sh [rounds]
set -u
rounds=${1:-1}
out=$(mktemp -d)
for _ in 1 2; do python3 -c "while True: pass" & done
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$out"' EXIT
for _ in $(seq "$rounds"); do
  for mode in ray-default own; do
    rm -rf "$out/job"
    if [ "$mode" = ray-default ]; then export RAY_worker_niceness=15; else unset RAY_worker_niceness; fi
    start=$(date +%s.%N)
    .venv/bin/rig-ray batch examples/prompts.jsonl "$out/job" \
      --generator 'transformers!smollm2-135m,max_tokens=48,temperature=0' \
      --template 'Write one short sentence about $topic.' --quiet > /dev/null 2>&1
    status=$?
    echo "workers at $mode niceness: exit $status, $(echo "$(date +%s.%N) - $start" | bc) s"
  done
done
