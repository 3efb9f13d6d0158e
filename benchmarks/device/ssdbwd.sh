#!/usr/bin/env bash
# Device round of the dedicated CUDA SSD backward: its gradient tests against the float64 reference,
# then the fwd+bwd timings at issue 6's two shapes. Usage: benchmarks/device/ssdbwd.sh OUT_DIR (70 s)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/ssdbwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SSM_SSD_BWD_KERNEL=1
timeout 40 python3 -m pytest tests/ops/test_ssd_cuda.py -x -q -p no:cacheprovider -rf \
  -k "kernel_backward or (bitwise and kernel)" > "$OUT/tests.log" 2>&1
echo "tests (test_ssd_cuda -k kernel_backward/bitwise-kernel) rc=$?"
grep -E "^FAILED|^E  |passed|failed|error" "$OUT/tests.log" | cut -c1-300 | head -12
timeout 25 python3 benchmarks/bench_ssd_bwd_cuda.py --out "$OUT/bench.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -E "^\{|H100|H200" "$OUT/bench.log" | cut -c1-260
