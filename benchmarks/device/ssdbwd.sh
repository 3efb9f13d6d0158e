#!/usr/bin/env bash
# Device round of the dedicated CUDA SSD backward (the default): the gradient tests of test_ssd_cuda against
# the float64 reference (kernel, composed and bitwise), the other CUDA gradient rows on it (the fused Mamba-2
# path, the module consistency tests, test_ssd), then the fwd+bwd timings at issue 6's two shapes.
# Usage: benchmarks/device/ssdbwd.sh OUT_DIR (70 s in all)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/ssdbwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
summary() { grep -E "^FAILED|^E  |passed|failed|error" "$1" | cut -c1-240 | head -${2:-8}; }
timeout 22 python3 -m pytest tests/ops/test_ssd_cuda.py -x -q -p no:cacheprovider -rf \
  -k "gradients or backward or bitwise" > "$OUT/tests_kernel.log" 2>&1
echo "test_ssd_cuda -k 'gradients or backward or bitwise' rc=$?"; summary "$OUT/tests_kernel.log"
timeout 26 python3 -m pytest tests/ops/test_ssd_split.py tests/modules/test_consistency_cuda.py tests/ops/test_ssd.py \
  -x -v -p no:cacheprovider -rf -k "(gradients and cuda) or gradients_match_cpu" > "$OUT/tests_rows.log" 2>&1
echo "split/consistency/test_ssd gradient rows rc=$? ($(grep -c PASSED "$OUT/tests_rows.log") passed)"
summary "$OUT/tests_rows.log" 4
timeout 15 python3 benchmarks/bench_ssd_bwd_cuda.py --modes kernel --out "$OUT/bench.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -E "^\{|H100|H200" "$OUT/bench.log" | cut -c1-200
