#!/usr/bin/env bash
# Device round script of the state-step work (sessions 5-7, engineer step; runs after the lead's build, from the
# repo root, <= 50 s). Two processes: 1. benchmarks/device/step_bench.py: the GPU tests of both state-step files
# first (CUDA cases); then, once the ncu process is done and with the NaN poisoning off, the graph method's floors and
# the graph-timed state steps in each form (items past --deadline skipped). 2. In parallel with the tests (it times
# nothing): ncu on the Mamba-1 b64 step, mamba1_pair_kernel (one and two rows a warp) and the coal form (benchmarks/device/step_ncu.py).
# Usage: benchmarks/device/step.sh OUT_DIR
set -uo pipefail
OUT=${1:-step_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
TESTS=tests/ops/test_state_step.py,tests/ops/test_proj_state_step.py
SEL="cuda"
STEPS=m1:lean,m1:pair,m2b1:lean,m2b1:pdl,m1:pair_r2,m1:pair_pdl,m1:m1old,m1:pair,m1:lean,m1:pair_r2,m2b1:lean,m2b1:pdl,m1proj:lean,m2b64:lean
(timeout -k 2 24 ncu --clock-control none -k regex:"mamba1_pair|mamba1_step_kernel" --launch-count 3 \
  --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
  --section LaunchStats --print-details all \
  python3 benchmarks/device/step_ncu.py pair,coal,pair_r2 > "$OUT/ncu.txt" 2>&1; echo "ncu rc=$?" > "$OUT/ncu.done") &
timeout -k 2 46 python3 benchmarks/device/step_bench.py "$OUT" --tests "$TESTS" -k "$SEL" --wait "$OUT/ncu.done" \
  --floors --deadline 42 --steps "$STEPS" --models "" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
wait
cat "$OUT/ncu.done" 2>/dev/null
grep -vE "^\s+[0-9.]+ us x" "$OUT/bench.log" | cut -c1-160 | head -24
grep -E "^  [^ ].*\([0-9]+, [0-9]+, [0-9]+\)x\(|Duration|DRAM Throughput|Warp Cycles Per Issued|Achieved Occupancy|Registers Per" "$OUT/ncu.txt" | cut -c1-100 | head -16
