#!/usr/bin/env bash
# Device round of the dedicated CUDA SSD backward (session 4: the register-fragment kernels of ssd_bwd_mma.cuh
# for half / bfloat16; SSM_SSD_BWD_PREFETCH=0 dc without its L1 prefetch, SSM_SSD_BWD_HEADSUM=0 dB / dC per head):
# the gradient tests of test_ssd_cuda against the float64 reference (kernel grid, variants, composed, bitwise),
# the CUDA gradient rows of test_ssd / test_ssd_split, the fwd+bwd timings at issue 6's two shapes (with and
# without the prefetch), then an ncu stall profile of the four register kernels.
# Usage: benchmarks/device/ssdbwd.sh OUT_DIR (70 s in all)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/ssdbwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
summary() { grep -E "^FAILED|^E  |passed|failed|error" "$1" | cut -c1-240 | head -${2:-8}; }
timeout 10 python3 -m pytest tests/ops/test_ssd_cuda.py --maxfail=6 -q -p no:cacheprovider -rf \
  -k "gradients or backward or bitwise" > "$OUT/tests_kernel.log" 2>&1
echo "test_ssd_cuda -k 'gradients or backward or bitwise' rc=$?"; summary "$OUT/tests_kernel.log"
SSM_SSD_BWD_PREFETCH=0 timeout 7 python3 -m pytest tests/ops/test_ssd_cuda.py --maxfail=3 -q -p no:cacheprovider \
  -k "kernel_backward_matches and not f32" > "$OUT/tests_noprefetch.log" 2>&1
echo "no prefetch: kernel grid rc=$?"; summary "$OUT/tests_noprefetch.log" 3
timeout 13 python3 -m pytest tests/ops/test_ssd_split.py tests/ops/test_ssd.py \
  -v -p no:cacheprovider -rf -k "gradients and cuda" > "$OUT/tests_rows.log" 2>&1
echo "test_ssd/split gradient rows rc=$? ($(grep -c PASSED "$OUT/tests_rows.log") passed)"
summary "$OUT/tests_rows.log" 4
timeout 11 python3 benchmarks/bench_ssd_bwd_cuda.py --modes kernel --out "$OUT/bench.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -E "^\{|H100|H200" "$OUT/bench.log" | cut -c1-200
grep -A9 "top kernels" "$OUT/bench.log" | cut -c1-100 | head -20
SSM_SSD_BWD_PREFETCH=0 timeout 9 python3 benchmarks/bench_ssd_bwd_cuda.py --modes kernel --out "$OUT/bench_nopf.json" \
  > "$OUT/bench_nopf.log" 2>&1
echo "bench without the prefetch rc=$?"
grep -E "^\{" "$OUT/bench_nopf.log" | cut -c1-200
grep -E "bwd_dc_mma" "$OUT/bench_nopf.log" | cut -c1-100
timeout -k 2 18 ncu --clock-control none -k 'regex:bwd_d(c|b|x|state)_mma_kernel' --launch-count 4 --section LaunchStats \
  --section Occupancy --section SpeedOfLight --section WarpStateStats \
  python3 benchmarks/device/ncu_driver.py ssd > "$OUT/ncu.txt" 2>&1
echo "ncu rc=$?"
grep -E "^  [^ ].*\([0-9]+, [0-9]+, [0-9]+\)x\(|Duration|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Compute \(SM\) Th|Local Memory Spilling|stalled" \
  "$OUT/ncu.txt" | cut -c1-140 | head -40
