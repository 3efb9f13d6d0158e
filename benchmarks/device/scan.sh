#!/usr/bin/env bash
# Device round for the CUDA selective scan (issue 5, engineer scan, session 6): the CUDA cases of the
# layout tests (the forced kernel forms first: row forward with one / two channels per thread, backward
# with one / two entries per pass and two / four warps) and of the scan grid, then
# benchmarks/device/scan_time.py (bench shape and the Mamba-1 model shapes in mamba_ssm's layout, fwd and
# fwd+bwd, event and kernel times). Runs from the repo root after the lead's build; logs and JSON into $1;
# at most ~50 s.
OUT=${1:-scan_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
# the L = 16384 gradient test (a 16384-step float64 reference loop) does not fit the time limit
PT="-m pytest -q -m cuda -p no:cacheprovider -p no:hypothesispytest -rf --maxfail=6"
timeout -k 2 -s INT 24 $PY $PT -k "not long_sequence_cuda" tests/ops/test_selective_scan_layouts.py \
  tests/ops/test_selective_scan.py > "$OUT/pytest.log" 2>&1
echo "pytest rc=$? at ${SECONDS}s: $(grep -E "passed|failed|error" "$OUT/pytest.log" | tail -1)"
grep -E "^(FAILED|ERROR)|Error:|error |assert" "$OUT/pytest.log" | head -8 | cut -c1-300
T=$((49 - SECONDS)); [ "$T" -gt 22 ] && T=22
timeout -k 1 $T $PY benchmarks/device/scan_time.py --out "$OUT/scan_time.json" > "$OUT/time.log" 2>&1
echo "time rc=$? at ${SECONDS}s"; grep -vE "Warning|warn" "$OUT/time.log" | cut -c1-220 | tail -8
