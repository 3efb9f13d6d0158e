#!/usr/bin/env bash
# Device round of the dedicated CUDA SSD backward (session 6): one Python process for the GPU gradient tests
# (kernel grid f32/f16/bf16 + variants + bitwise, model sizes, the test_ssd / test_ssd_split CUDA gradient rows)
# and the fwd+bwd timings (the last sums by one kernel vs torch ops) / host profile / ddt_bias error over seeds
# (ssdbwd_round.py), then an ncu profile of the dc / db tile kernels (four blocks per SM) and the sums kernel.
# Usage: benchmarks/device/ssdbwd.sh OUT_DIR (repo root, after the build; ~48 s)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/ssdbwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
timeout -k 1 35 $PY benchmarks/device/ssdbwd_round.py "$OUT" 25 > "$OUT/round.log" 2> "$OUT/round.err"
echo "round rc=$?"; grep -E "^TESTS" "$OUT/round.err" | cut -c1-300
grep -E "^FAILED|^E  " "$OUT/round.log" | head -4 | cut -c1-220
grep -E "^\{|H100|H200|budget|^-- " "$OUT/round.log" | cut -c1-420
timeout -k 1 12 ncu --clock-control none -k "regex:bwd_(dc_mma|db_mma|reduce)_kernel" --launch-count 3 \
  --section SpeedOfLight --section WarpStateStats --section Occupancy \
  $PY benchmarks/device/ncu_driver.py ssd > "$OUT/ncu.txt" 2>&1
echo "ncu rc=$?"; grep -E "bwd_[a-z_]*_kernel<|Duration|Warp Cycles Per Issued|No Eligible|Achieved Occupancy" \
  "$OUT/ncu.txt" | cut -c1-110 | head -24
echo "SUMMARY $(grep -E '^TESTS' "$OUT/round.err" | sed -E 's/.*TESTS ([^:]*): rc=([0-9]+) \{.passed.: ([0-9]+), .failed.: ([0-9]+).*/\1 rc=\2 p=\3 f=\4;/' | tr '\n' ' ')"
grep -E '^\{' "$OUT/round.log" | sed -E 's/.*"case": "([^"]*)", "env": ([^,]*\}?), "kernels_ms": ([0-9.]+), "eager_ms": ([0-9.]+), "host_ms": ([0-9.]+).*/\1 \2 kernels \3 eager \4 host \5 ms/'
