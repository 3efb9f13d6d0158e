#!/usr/bin/env bash
# Device round for the CUDA selective scan (issue 5): the CUDA-marked scan and mamba_inner tests
# (new layouts first), then fwd / fwd+bwd timings at the bench and model shapes and one fused
# Mamba-1 layer. Runs from the repo root after the lead's build; logs and JSON into $1. ~70 s.
OUT=${1:-scan_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
# the L = 16384 gradient test (a 16384-step float64 reference loop) does not fit the time limit
timeout -k 4 -s INT 35 $PY -m pytest -q --maxfail=5 -m cuda -p no:cacheprovider -rf -k "not long_sequence_cuda" \
  tests/ops/test_selective_scan_layouts.py tests/ops/test_mamba_inner.py tests/ops/test_selective_scan.py \
  > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?: $(grep -E "passed|failed|error" "$OUT/pytest.log" | tail -1)"
grep -E "^(FAILED|ERROR)|Error:|error " "$OUT/pytest.log" | head -8 | cut -c1-300
timeout -k 2 27 $PY benchmarks/bench_scan_layouts_cuda.py --out "$OUT/scan_layouts.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
cut -c1-130 "$OUT/bench.log" | head -60
