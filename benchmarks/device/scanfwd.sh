#!/usr/bin/env bash
# Device round for the CUDA selective-scan forward (issue 5, engineer scanfwd, session 5): the CUDA
# cases of the layout and scan tests (the row kernel's first), then the forward /
# pre-pass kernel times at the bench shape with the row kernel and the block kernel in
# one process (outputs compared). Runs from the repo root after the lead's build; logs and JSON
# into $1. At most ~50 s.
OUT=${1:-scanfwd_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
# the L = 16384 gradient test (a 16384-step float64 reference loop) does not fit the time limit
timeout -k 2 -s INT 29 $PY -m pytest -q -x -m cuda -p no:cacheprovider -rf -k "not long_sequence_cuda" \
  tests/ops/test_selective_scan_layouts.py tests/ops/test_selective_scan.py > "$OUT/pytest.log" 2>&1
echo "pytest rc=$? at ${SECONDS}s: $(grep -E "passed|failed|error" "$OUT/pytest.log" | tail -1)"
grep -E "^(FAILED|ERROR)|Error:|error |assert" "$OUT/pytest.log" | head -8 | cut -c1-300
T=$((48 - SECONDS)); [ "$T" -gt 17 ] && T=17
timeout -k 1 $T $PY benchmarks/device/scanfwd_time.py --out "$OUT/time.json" > "$OUT/time.log" 2>&1
echo "time rc=$? at ${SECONDS}s"; grep -E "^(rows|block)|Error|Trace|error" "$OUT/time.log" | cut -c1-170 | tail -8
