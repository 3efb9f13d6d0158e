#!/usr/bin/env bash
# Device round of the dedicated CUDA SSD backward (session 4: the register-fragment kernels of ssd_bwd_mma.cuh
# for half / bfloat16; SSM_SSD_BWD_PREFETCH=0 dc without its L1 prefetch, SSM_SSD_BWD_HEADSUM=0 dB / dC per head):
# the gradient tests of test_ssd_cuda against the float64 reference (kernel grid, variants, composed, bitwise),
# the CUDA gradient rows of test_ssd / test_ssd_split, the fwd+bwd timings at issue 6's two shapes (limits allow
# ~10 s of Python start-up per process, as on the round-2 machine).
# Usage: benchmarks/device/ssdbwd.sh OUT_DIR (70 s in all)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/ssdbwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
summary() { grep -E "^FAILED|^E  |passed|failed|error" "$1" | cut -c1-240 | head -${2:-8}; }
timeout 26 python3 -m pytest tests/ops/test_ssd_cuda.py --maxfail=6 -q -p no:cacheprovider -rf \
  -k "gradients or backward or bitwise" > "$OUT/tests_kernel.log" 2>&1
echo "test_ssd_cuda -k 'gradients or backward or bitwise' rc=$?"; summary "$OUT/tests_kernel.log"
timeout 20 python3 -m pytest tests/ops/test_ssd_split.py tests/ops/test_ssd.py \
  -v -p no:cacheprovider -rf -k "gradients and cuda" > "$OUT/tests_rows.log" 2>&1
echo "test_ssd/split gradient rows rc=$? ($(grep -c PASSED "$OUT/tests_rows.log") passed)"
summary "$OUT/tests_rows.log" 4
timeout 20 python3 benchmarks/bench_ssd_bwd_cuda.py --modes kernel --out "$OUT/bench.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -E "^\{|H100|H200" "$OUT/bench.log" | cut -c1-200
grep -A9 "top kernels" "$OUT/bench.log" | cut -c1-100 | head -20
