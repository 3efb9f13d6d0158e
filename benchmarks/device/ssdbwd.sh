#!/usr/bin/env bash
# Device round of the dedicated CUDA SSD backward (session 4: the register-fragment tile kernels of
# ssd_bwd_mma.cuh, SSM_SSD_BWD_MMA=0 for the wmma ones): the gradient tests of test_ssd_cuda against the
# float64 reference (kernel grid, composed, bitwise), the CUDA gradient rows of test_ssd_split / test_ssd,
# the fwd+bwd timings at issue 6's two shapes, then an ncu stall profile of the three tile kernels.
# Usage: benchmarks/device/ssdbwd.sh OUT_DIR (70 s in all)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/ssdbwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
summary() { grep -E "^FAILED|^E  |passed|failed|error" "$1" | cut -c1-240 | head -${2:-8}; }
timeout 20 python3 -m pytest tests/ops/test_ssd_cuda.py --maxfail=6 -q -p no:cacheprovider -rf \
  -k "gradients or backward or bitwise" > "$OUT/tests_kernel.log" 2>&1
echo "test_ssd_cuda -k 'gradients or backward or bitwise' rc=$?"; summary "$OUT/tests_kernel.log"
timeout 12 python3 -m pytest tests/ops/test_ssd.py tests/ops/test_ssd_split.py \
  -x -v -p no:cacheprovider -rf -k "gradients and cuda" > "$OUT/tests_rows.log" 2>&1
echo "split/test_ssd gradient rows rc=$? ($(grep -c PASSED "$OUT/tests_rows.log") passed)"
summary "$OUT/tests_rows.log" 4
timeout 15 python3 benchmarks/bench_ssd_bwd_cuda.py --modes kernel --out "$OUT/bench.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -E "^\{|H100|H200" "$OUT/bench.log" | cut -c1-200
grep -A12 "top kernels" "$OUT/bench.log" | cut -c1-100 | head -28
timeout -k 3 20 ncu --clock-control none -k 'regex:bwd_d(c|b|x|state)_mma_kernel' --launch-count 4 --section LaunchStats \
  --section Occupancy --section SpeedOfLight --section WarpStateStats --section SourceCounters \
  python3 benchmarks/device/ncu_driver.py ssd > "$OUT/ncu.txt" 2>&1
echo "ncu rc=$?"
grep -E "^  [^ ].*\([0-9]+, [0-9]+, [0-9]+\)x\(|Duration|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Compute \(SM\) Th" \
  "$OUT/ncu.txt" | cut -c1-120 | head -24
