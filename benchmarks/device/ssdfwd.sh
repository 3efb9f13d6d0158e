#!/usr/bin/env bash
# Device round for ssdfwd (issue 6, CUDA SSD forward, session 6). Process 1: the GPU SSD tests with the
# exact staged chunk output (test_ssd_split's CUDA rows first, then the forward rows of test_ssd_cuda /
# test_ssd, the bf16 kernel-backward grid and the eager plans), the error distribution of y over 10 seeds
# (ssdfwd_seeds.py: exact vs session 5's kernel vs the low-precision reference), then repeats of the split
# file's f16 / bf16 gradient rows while its budget lasts. Process 2 (no NaN poisoning): forward
# timings at B8 L2048 / B1 L8192, exact and SSM_SSD_FWD_EXACT=0, and without the eager plan (host time too).
# (Round 1 also ran ncu of both staged outputs: /work/rounds/s6r1/ssdfwd/ncu.txt.)
# Usage: ssdfwd.sh OUT_DIR (repo root, after the build; at most ~49 s).
set -uo pipefail
OUT=${1:-/tmp/ssdfwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
left() { echo $((${1} - SECONDS)); }
timeout -k 2 36 $PY benchmarks/device/ssdfwd_tests.py --seeds "$OUT/seeds.json" 10 --budget 31 > "$OUT/run.log" 2> "$OUT/run.err"
echo "tests+seeds rc=$? at ${SECONDS}s"
grep -E "SUMMARY exact|REPEATS|failed.: [1-9]" "$OUT/run.err" | cut -c1-600
grep -- "-- y err" "$OUT/run.log" | cut -c1-400
T=$(left 49)
timeout -k 1 $T $PY benchmarks/device/ssdfwd_time.py "$OUT/time.json" > "$OUT/time.log" 2>&1
echo "timing rc=$? at ${SECONDS}s"
grep -E "gpu .* ms, eager| ms  (void|chunk|state)" "$OUT/time.log" | sed 's/void ssm::cuda::ssd:://; s/(ssm::SsdParams.*//' | cut -c1-100
