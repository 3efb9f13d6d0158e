#!/usr/bin/env bash
# Device round of the dedicated CUDA SSD backward (session 4: the register-fragment kernels of ssd_bwd_mma.cuh;
# SSM_SSD_BWD_MMA=0 the wmma ones, SSM_SSD_BWD_TOKENS=0 token data rebuilt per block, SSM_SSD_BWD_HEADSUM=0 dB / dC
# per head): the gradient tests of test_ssd_cuda against the float64 reference (kernel grid, variants, composed,
# bitwise; on a failure a few rows again with each switch off), the CUDA gradient rows of test_ssd / test_ssd_split,
# the fwd+bwd timings at issue 6's two shapes, then an ncu stall profile of the four register kernels.
# Usage: benchmarks/device/ssdbwd.sh OUT_DIR (70 s in all)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/ssdbwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
summary() { grep -E "^FAILED|^E  |passed|failed|error" "$1" | cut -c1-240 | head -${2:-8}; }
timeout 20 python3 -m pytest tests/ops/test_ssd_cuda.py --maxfail=6 -q -p no:cacheprovider -rf \
  -k "gradients or backward or bitwise" > "$OUT/tests_kernel.log" 2>&1
rc=$?
echo "test_ssd_cuda -k 'gradients or backward or bitwise' rc=$rc"; summary "$OUT/tests_kernel.log"
if [ $rc -ne 0 ]; then  # which switch fixes it
  for sw in SSM_SSD_BWD_TOKENS=0 SSM_SSD_BWD_HEADSUM=0 SSM_SSD_BWD_MMA=0; do
    env $sw timeout 7 python3 -m pytest tests/ops/test_ssd_cuda.py -x -q -p no:cacheprovider \
      -k "kernel_backward_matches and bf16 and rows" > "$OUT/tests_$sw.log" 2>&1
    echo "$sw: rc=$?"; summary "$OUT/tests_$sw.log" 3
  done
else
  timeout 12 python3 -m pytest tests/ops/test_ssd.py tests/ops/test_ssd_split.py \
    -x -v -p no:cacheprovider -rf -k "gradients and cuda" > "$OUT/tests_rows.log" 2>&1
  echo "test_ssd/split gradient rows rc=$? ($(grep -c PASSED "$OUT/tests_rows.log") passed)"
  summary "$OUT/tests_rows.log" 4
fi
timeout 14 python3 benchmarks/bench_ssd_bwd_cuda.py --modes kernel --out "$OUT/bench.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -E "^\{|H100|H200" "$OUT/bench.log" | cut -c1-200
grep -A12 "top kernels" "$OUT/bench.log" | cut -c1-100 | head -28
timeout -k 3 16 ncu --clock-control none -k 'regex:bwd_d(c|b|x|state)_mma_kernel' --launch-count 4 --section LaunchStats \
  --section Occupancy --section SpeedOfLight --section WarpStateStats --section SourceCounters \
  python3 benchmarks/device/ncu_driver.py ssd > "$OUT/ncu.txt" 2>&1
echo "ncu rc=$?"
grep -E "^  [^ ].*\([0-9]+, [0-9]+, [0-9]+\)x\(|Duration|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Compute \(SM\) Th" \
  "$OUT/ncu.txt" | cut -c1-120 | head -24
