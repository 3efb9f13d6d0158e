#!/usr/bin/env bash
# Device round for the CUDA selective scan (issue 5, engineer scan, session 6): the CUDA cases of the
# layout tests (the forced kernel forms first: row forward with one / two channels per thread, backward
# with two entries per pass), then benchmarks/device/scan_time.py (bench shape and the Mamba-1 model
# shapes in mamba_ssm's layout, forms timed side by side), then ncu of the row forward at the bench
# shape. Runs from the repo root after the lead's build; logs and JSON into $1; at most ~50 s.
OUT=${1:-scan_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
PT="-m pytest -q -m cuda -p no:cacheprovider -p no:hypothesispytest -rf --maxfail=4"
timeout -k 2 -s INT 15 $PY $PT tests/ops/test_selective_scan_layouts.py > "$OUT/pytest.log" 2>&1
echo "pytest rc=$? at ${SECONDS}s: $(grep -E "passed|failed|error" "$OUT/pytest.log" | tail -1)"
grep -E "^(FAILED|ERROR)|Error:|error |assert" "$OUT/pytest.log" | head -6 | cut -c1-300
T=$((34 - SECONDS)); [ "$T" -gt 18 ] && T=18
timeout -k 1 $T $PY benchmarks/device/scan_time.py --out "$OUT/scan_time.json" > "$OUT/time.log" 2>&1
echo "time rc=$? at ${SECONDS}s"; grep -vE "Warning|warn" "$OUT/time.log" | cut -c1-200 | tail -12
T=$((49 - SECONDS)); [ "$T" -gt 15 ] && T=15
[ "$T" -gt 4 ] && timeout -k 1 $T ncu --clock-control none -k regex:fwd_rows_kernel --launch-count 1 \
  --section SpeedOfLight --section WarpStateStats --section ComputeWorkloadAnalysis --section SourceCounters \
  --metrics smsp__inst_executed.sum,smsp__inst_executed_pipe_xu.sum \
  $PY benchmarks/device/ncu_driver.py scan > "$OUT/ncu.txt" 2>&1
echo "ncu rc=$? at ${SECONDS}s"; grep -E "Duration|Issued Warp|inst_executed|Warp Cycles Per Issued" "$OUT/ncu.txt" | head -6
