#!/usr/bin/env bash
# Device round of the dedicated CUDA SSD backward (the default; SSM_SSD_BWD_KERNEL=1): its gradient tests against the
# float64 reference, the other CUDA gradient rows on it (test_ssd, the fused Mamba-2 path), then the
# fwd+bwd timings at issue 6's two shapes. Usage: benchmarks/device/ssdbwd.sh OUT_DIR (70 s in all)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/ssdbwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SSM_SSD_BWD_KERNEL=1
summary() { grep -E "^FAILED|^E  |passed|failed|error" "$1" | cut -c1-240 | head -${2:-8}; }
timeout 20 python3 -m pytest tests/ops/test_ssd_cuda.py -x -q -p no:cacheprovider -rf \
  -k "kernel_backward or (bitwise and kernel)" > "$OUT/tests_kernel.log" 2>&1
echo "test_ssd_cuda -k kernel_backward/bitwise-kernel rc=$?"; summary "$OUT/tests_kernel.log"
timeout 28 python3 -m pytest tests/ops/test_ssd.py tests/ops/test_ssd_split.py -x -v -p no:cacheprovider -rf \
  -k "gradients and cuda" > "$OUT/tests_rows.log" 2>&1
echo "test_ssd/test_ssd_split -k 'gradients and cuda' rc=$? ($(grep -c PASSED "$OUT/tests_rows.log") passed)"
summary "$OUT/tests_rows.log" 4
timeout 18 python3 benchmarks/bench_ssd_bwd_cuda.py --modes kernel --out "$OUT/bench.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -E "^\{|H100|H200" "$OUT/bench.log" | cut -c1-200
