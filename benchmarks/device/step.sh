#!/usr/bin/env bash
# Device round script of the state-step work (sessions 5-7, engineer step; runs after the lead's build, from the
# repo root, <= 50 s). Three processes started together: 1. the GPU tests of both state-step files (CUDA cases;
# benchmarks/device/step_bench.py --tests-only); 2. ncu on the Mamba-1 b64 step (mamba1_pair_kernel) and the Mamba-2 b1
# step (lean_kernel) (benchmarks/device/step_ncu.py); 3. once both are done (their .done files), the graph method's
# floors and the graph-timed state steps in each form, in a process that ran no test (no NaN poisoning; items past
# --deadline skipped).
# Usage: benchmarks/device/step.sh OUT_DIR
set -uo pipefail
OUT=${1:-step_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
TESTS=tests/ops/test_state_step.py,tests/ops/test_proj_state_step.py
STEPS=m1:lean,m2b1:lean,m2b1:pdl,m1:pdl,m1:m1old,m1:lean,m2b1:lean,m2b1:pdl,m1:pdl,m1proj:lean,m2b64:lean
(timeout -k 2 24 ncu --clock-control none -k regex:"mamba1_pair|lean_kernel" --launch-count 2 \
  --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section SourceCounters \
  --print-details all \
  python3 benchmarks/device/step_ncu.py default > "$OUT/ncu.txt" 2>&1; echo "ncu rc=$?" > "$OUT/ncu.done") &
(timeout -k 2 40 python3 benchmarks/device/step_bench.py "$OUT" --tests "$TESTS" -k cuda --tests-only \
  > "$OUT/tests.log" 2>&1; echo "tests rc=$?" > "$OUT/tests.done") &
timeout -k 2 47 python3 benchmarks/device/step_bench.py "$OUT" --tests "" --wait "$OUT/tests.done,$OUT/ncu.done" \
  --wait-max 36 --floors --deadline 44 --steps "$STEPS" --models "" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
wait
cat "$OUT/ncu.done" "$OUT/tests.done" 2>/dev/null
grep -E "^tests rc" "$OUT/tests.log"
grep -vE "^\s+[0-9.]+ us x" "$OUT/bench.log" | cut -c1-160 | head -24
grep -E "^  [^ ].*\([0-9]+, [0-9]+, [0-9]+\)x\(|Duration|DRAM Throughput|Warp Cycles Per Issued|Achieved Occupancy|Registers Per" "$OUT/ncu.txt" | cut -c1-100 | head -24
