#!/usr/bin/env bash
# Device round for ssdfwd (issue 6, CUDA SSD forward, session 8). Process 1: the GPU SSD tests on the default kernels
# (test_ssd_split's CUDA rows, the forward rows of test_ssd_cuda / test_ssd, the bf16 kernel-backward grid), y's error
# over a few seeds, then the ssd_split bf16 gradient flake with H_in hi + lo vs rounded (ssdfwd_flake.py) for the time
# left. Process 2 (no NaN poisoning): forward timings at B8 L2048 / B1 L8192, default and SSM_SSD_FWD_HIN_SPLIT=1.
# Usage: ssdfwd.sh OUT_DIR (repo root, after the build; at most ~49 s).
set -uo pipefail
OUT=${1:-/tmp/ssdfwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
left() { echo $((${1} - SECONDS)); }
timeout -k 2 37 $PY benchmarks/device/ssdfwd_tests.py --seeds "$OUT/seeds.json" 2 --budget 34 \
  --flake "$OUT/flake.json" > "$OUT/run.log" 2> "$OUT/run.err"
echo "tests+seeds+flake rc=$? at ${SECONDS}s"
grep -E "SUMMARY|BITWISE|failed.: [1-9]" "$OUT/run.err" | cut -c1-600
grep -E "^FAILED|Error" "$OUT/run.log" | head -5 | cut -c1-300
grep -E -- "^-- |^   " "$OUT/run.log" | cut -c1-400
T=$(left 49)
timeout -k 1 $T $PY benchmarks/device/ssdfwd_time.py "$OUT/time.json" > "$OUT/time.log" 2>&1
echo "timing rc=$? at ${SECONDS}s"
grep -E "gpu .* ms, eager| ms  (void|chunk|state)" "$OUT/time.log" | \
  sed 's/void ssm::cuda::ssd:://; s/(ssm::SsdParams.*//' | cut -c1-100
