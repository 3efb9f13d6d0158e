#!/usr/bin/env bash
# Device round for ssdfwd (issue 6, CUDA SSD forward, session 7). Process 1: the GPU SSD tests with the recompute
# chunk output forced (SSM_SSD_FWD_RECOMPUTE=1: test_ssd_split's CUDA rows, the forward rows of test_ssd_cuda /
# test_ssd, the bf16 kernel-backward grid), then the error distribution of y over seeds (ssdfwd_seeds.py: exact vs
# recompute vs session 5's kernel vs the low-precision reference). Process 2 (no NaN poisoning): forward timings at
# B8 L2048 / B1 L8192, default and recompute (S split and rounded once). Then, with the time left, ncu of the
# default and recompute staged chunk outputs at B8.
# Usage: ssdfwd.sh OUT_DIR (repo root, after the build; at most ~49 s).
set -uo pipefail
OUT=${1:-/tmp/ssdfwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
left() { echo $((${1} - SECONDS)); }
timeout -k 2 27 $PY benchmarks/device/ssdfwd_tests.py --seeds "$OUT/seeds.json" 6 --budget 0 > "$OUT/run.log" 2> "$OUT/run.err"
echo "tests+seeds rc=$? at ${SECONDS}s"
grep -E "SUMMARY|failed.: [1-9]" "$OUT/run.err" | cut -c1-600
grep -- "-- y err" "$OUT/run.log" | cut -c1-500
T=$(left 44)
timeout -k 1 $T $PY benchmarks/device/ssdfwd_time.py "$OUT/time.json" > "$OUT/time.log" 2>&1
echo "timing rc=$? at ${SECONDS}s"
grep -E "gpu .* ms, eager| ms  (void|chunk|state)" "$OUT/time.log" | sed 's/void ssm::cuda::ssd:://; s/(ssm::SsdParams.*//' | cut -c1-100
T=$(left 49)
if [ "$T" -ge 9 ]; then
  timeout -k 1 $T ncu --clock-control none -k regex:chunk_scan_staged --launch-count 2 --section SpeedOfLight \
    --section Occupancy --section WarpStateStats --section InstructionStats $PY benchmarks/device/ssdfwd_ncu.py \
    > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$? at ${SECONDS}s"
  grep -E "chunk_scan_staged|Duration|Executed Instructions  |Warp Cycles Per Issued|Registers Per|Achieved Occ" "$OUT/ncu.txt" | cut -c1-120
fi
