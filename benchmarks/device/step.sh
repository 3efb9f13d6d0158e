#!/usr/bin/env bash
# Device round script of the state-step work (session 5, engineer step; runs after the lead's build, from the
# repo root, <= 50 s): one Python process (benchmarks/device/step_bench.py): the GPU tests of the state steps
# first, then the graph-timed state steps (key forms), end-to-end b64 decode and its kernel list, the other forms.
# Usage: benchmarks/device/step.sh OUT_DIR
set -uo pipefail
OUT=${1:-step_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STEPS=m1:lean,m1:general,m2b1:lean,m2b1:general,m2b64:lean,m2b64:general
STEPS2=m1:m1_r2,m1:lean
timeout -k 3 46 python3 benchmarks/device/step_bench.py "$OUT" --steps "$STEPS" --steps2 "$STEPS2" \
  --models mamba-130m,mamba-130m@nofold,mamba2-130m,mamba-1.4b,mamba-1.4b@nofold \
  --models2 mamba2-130m@general,mamba-1.4b@m1_r2 > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -vE "^\s+[0-9.]+ us x" "$OUT/bench.log" | cut -c1-200 | head -40
