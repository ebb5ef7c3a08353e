#!/bin/bash
# The GPU rollout questions docs/benchmarks.md leaves open, answered in one device lease (~5 min on an
# H200, at most 10): the prefill's attention block (the 256-token default against 1,024 and 2,048: each
# pair of blocks is a sequential loop step), the engine's CPU-sized defaults (64 slots, 512-token chunks)
# against the workload's 320 / 8,192, and peak GPU memory beside HF `generate`. Each run's full output
# goes to $OUT (or /tmp).
#
#     bash tools/gpu_rollout_sweep.sh
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_rollout_sweep}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
bench="python3 tools/bench_rollout.py --workload tool-0.5b --dtype bfloat16"
run() {
    local name=$1; shift
    echo "=== $name $(date +%T): $*"
    timeout 120 "$@" > "$out/$name.txt" 2>&1
    echo "exit $?"
    grep -E "^\| (tooln1|HF)|^Engine" "$out/$name.txt"
}
# Most telling first: a device call that runs out of time keeps the runs already written.
run block256 $bench --systems "tooln1 engine"
run block1024 $bench --systems "tooln1 engine" --engine prefill_block=1024
run hf $bench --systems "HF generate"
run defaults $bench --systems "tooln1 engine" --engine num_slots=0,prefill_chunk=512
run block2048 $bench --systems "tooln1 engine" --engine prefill_block=2048
echo "=== done $(date +%T)"
