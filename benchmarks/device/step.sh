#!/usr/bin/env bash
# Device round script of the state-step work (sessions 5-8, engineer step; runs after the lead's build, from the
# repo root, <= 50 s). Three processes started together: 1. the GPU tests of both state-step files (CUDA cases, the
# race test first: benchmarks/device/step_bench.py --tests-only); 2. ncu on the Mamba-1 b64 step (mamba1_pair_kernel)
# and the Mamba-2 b1 step (lean_kernel), both PDL with the state prefetched into L2 (benchmarks/device/step_ncu.py);
# 3. once both are done (their .done files), the graph method's floors and the graph-timed state steps in each form,
# in a process that ran no test (no NaN poisoning; items past --deadline skipped). Forms: lean = default,
# nopdl = SSM_PDL=0 (launched without PDL).
# Usage: benchmarks/device/step.sh OUT_DIR
set -uo pipefail
OUT=${1:-step_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
TESTS=tests/ops/test_state_step.py,tests/ops/test_proj_state_step.py
STEPS=m2b1:lean,m2b1:nopdl,m1:lean,m1:nopdl,m2b1:lean,m2b1:nopdl,m1:lean,m1:nopdl,m2b64:lean
(timeout -k 2 24 ncu --clock-control none -k regex:"mamba1_pair|lean_kernel" --launch-count 2 \
  --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section SourceCounters \
  --print-details all \
  python3 benchmarks/device/step_ncu.py default > "$OUT/ncu.txt" 2>&1; echo "ncu rc=$?" > "$OUT/ncu.done") &
(timeout -k 2 40 python3 benchmarks/device/step_bench.py "$OUT" --tests "$TESTS" \
  -k cuda --tests-only > "$OUT/tests.log" 2>&1; echo "tests rc=$?" > "$OUT/tests.done") &
timeout -k 2 47 python3 benchmarks/device/step_bench.py "$OUT" --tests "" --wait "$OUT/tests.done,$OUT/ncu.done" \
  --wait-max 34 --floors --deadline 44 --steps "$STEPS" --models "" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
wait
cat "$OUT/ncu.done" "$OUT/tests.done" 2>/dev/null
grep -E "^tests rc" "$OUT/tests.log" | cut -c1-600
grep -vE "^\s+[0-9.]+ us x" "$OUT/bench.log" | cut -c1-160 | head -24
grep -E "^  [^ ].*\([0-9]+, [0-9]+, [0-9]+\)x\(|Duration|DRAM Throughput|L2 Hit Rate|Warp Cycles Per Issued|Achieved Occupancy|Registers Per" "$OUT/ncu.txt" | cut -c1-100 | head -24
