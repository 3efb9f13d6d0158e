#!/usr/bin/env bash
# Device round for ssdfwd (issue 6, CUDA SSD forward, session 4), three Python processes (each takes
# seconds to start there): the GPU SSD tests on the default kernels (lean chunk output, multi-head
# chunk state, float32 C B^T) with the Mamba-2 module consistency and fused-path CUDA rows
# (ssdfwd_tests.py); the forward timings with every kernel switch at B8 / B1 (ssdfwd_time.py); an ncu
# stall / source profile of the lean chunk output.
# Usage: ssdfwd.sh OUT_DIR (repo root, after the build; ~68 s).
set -uo pipefail
OUT=${1:-/tmp/ssdfwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
timeout 33 $PY benchmarks/device/ssdfwd_tests.py > "$OUT/pytest.log" 2> "$OUT/pytest.err"
echo "tests rc=$?"; grep SUMMARY "$OUT/pytest.err" | cut -c1-400
grep -E "^FAILED|^E  " "$OUT/pytest.log" | head -6 | cut -c1-250
timeout 23 $PY benchmarks/device/ssdfwd_time.py "$OUT/time.json" > "$OUT/time.log" 2>&1
echo "timing rc=$?"; grep -vE "Warning|_warn_once|at::native|nvjet|conv_cl|gated_norm" "$OUT/time.log" | cut -c1-110 | tail -60
timeout -k 1 11 ncu --clock-control none -k regex:chunk_scan_lean --launch-count 1 --section SpeedOfLight \
  --section WarpStateStats --section SourceCounters $PY benchmarks/device/ncu_driver.py ssd > "$OUT/ncu_lean.txt" 2>&1
echo "ncu rc=$?"; grep -E "Duration|L2 Cache Throughput|Issue Slots Busy|Warp Cycles Per Issued" "$OUT/ncu_lean.txt" | cut -c1-120
grep -E "cycles being stalled|stall" "$OUT/ncu_lean.txt" | cut -c1-200 | head -8
