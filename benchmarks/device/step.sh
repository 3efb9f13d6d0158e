#!/usr/bin/env bash
# Device round script of the state-step work (sessions 5-6, engineer step; runs after the lead's build, from the
# repo root, <= 50 s). Two processes: 1. benchmarks/device/step_bench.py: the GPU tests of the state steps and the
# conv update first; then, once the ncu process is done and with the NaN poisoning off, the graph method's floors,
# the graph-timed state steps in each form, the b64 decodes and their kernel lists (items past --deadline skipped).
# 2. In parallel with the tests (it times nothing): ncu on the Mamba-1 b64 step (new and session-5 forms) and the
# Mamba-2 b1 step (benchmarks/device/step_ncu.py).
# Usage: benchmarks/device/step.sh OUT_DIR
set -uo pipefail
OUT=${1:-step_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
TESTS=tests/ops/test_state_step.py,tests/ops/test_proj_state_step.py,tests/ops/test_dw_causal_conv.py
# round 2: the tests round 1 ran before its conv failure minus the unchanged kernels' (general, Mamba-2 tiles)
SEL="cuda and (update or lean_kernel or variants or softplus or large_batches or runs_the or graph) and not general"
STEPS=m1:lean,m1:coal,m1:all,m1:m1old,m1:coal_r2,m2b1:lean,m2b1:kp1,m2b1:kp4,m2b1:general,m2b64:lean
(timeout -k 2 22 ncu --clock-control none -k regex:"mamba1_step" --launch-count 4 \
  --section SpeedOfLight --section WarpStateStats --section SchedulerStats --print-details all \
  python3 benchmarks/device/step_ncu.py new,coal,all,old > "$OUT/ncu.txt" 2>&1; echo "ncu rc=$?" > "$OUT/ncu.done") &
timeout -k 2 46 python3 benchmarks/device/step_bench.py "$OUT" --tests "$TESTS" -k "$SEL" --wait "$OUT/ncu.done" \
  --floors --gemms --deadline 40 --steps "$STEPS" --models mamba-1.4b,mamba-130m \
  --models2 mamba-1.4b@fold,mamba-130m@convold > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
wait
cat "$OUT/ncu.done" 2>/dev/null
grep -vE "^\s+[0-9.]+ us x" "$OUT/bench.log" | cut -c1-160 | head -30
grep -E "conv_update|mamba1_step" "$OUT/bench.log" | cut -c1-110 | head -6
grep -E "^  [^ ].*\([0-9]+, [0-9]+, [0-9]+\)x\(|Duration|DRAM Throughput|Warp Cycles Per Issued" "$OUT/ncu.txt" | cut -c1-100 | head -16
