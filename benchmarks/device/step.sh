#!/usr/bin/env bash
# Device round script of the state-step work (session 5, engineer step; runs after the lead's build, from the
# repo root, <= 50 s): one Python process (benchmarks/device/step_bench.py): the GPU tests of the state steps
# first, then the graph-timed state steps in each kernel form, then end-to-end b64 decode and its kernel list.
# Usage: benchmarks/device/step.sh OUT_DIR
set -uo pipefail
OUT=${1:-step_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STEPS=m1:lean,m1:m1_r2,m1:m1_r8,m1:m1_old,m2b1:lean,m2b1:pdl,m1:pdl,m1:m1_r2_pdl,m1:general,m2b1:general,m2b64:lean,m2b64:wide,m2b64:wide_pdl,m1:lean
timeout -k 3 46 python3 benchmarks/device/step_bench.py "$OUT" --steps "$STEPS" \
  --models mamba-130m,mamba2-130m,mamba-1.4b > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -vE "^\s+[0-9.]+ us x" "$OUT/bench.log" | cut -c1-200 | head -40
