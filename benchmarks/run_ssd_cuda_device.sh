#!/usr/bin/env bash
# One device call for the CUDA SSD scan: build, the GPU SSD tests, the SSD benchmark, and
# compute-sanitizer memcheck over a small slice. Usage: benchmarks/run_ssd_cuda_device.sh OUT_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
start=$(date +%s)
if ! SSM_BUILD_CUDA=on SSM_CUDA_ARCHS=${SSM_CUDA_ARCHS:-90} PYTHON=${PYTHON:-python3} SSM_BUILD_JOBS=${SSM_BUILD_JOBS:-16} \
    scripts/build_inplace.sh > "$OUT/build.log" 2>&1; then
  grep -E "error|Error" "$OUT/build.log" | head -30
  exit 1
fi
echo "build: $(( $(date +%s) - start )) s"
timeout ${TEST_S:-120} python3 -m pytest tests/ops/test_ssd.py tests/ops/test_ssd_cuda.py -q -m cuda -p no:cacheprovider \
  -rf --maxfail=30 > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?"; grep -E "^FAILED|^ERROR|passed|failed" "$OUT/pytest.log" | cut -c1-400 | tail -40
timeout ${BENCH_S:-100} python3 benchmarks/bench_ssd_cuda.py --out "$OUT/bench_ssd_cuda.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"; tail -45 "$OUT/bench.log" | cut -c1-600
timeout ${SAN_S:-60} compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest tests/ops/test_ssd.py \
  tests/ops/test_ssd_cuda.py -q -m cuda -p no:cacheprovider -k "(shape1 and all) or (small and f32) or (crossing and f32) or (gradients_match_reference and plain)" \
  > "$OUT/sanitizer_memcheck.log" 2>&1
echo "memcheck rc=$?: $(grep -E "ERROR SUMMARY|passed|failed" "$OUT/sanitizer_memcheck.log" | tail -2 | tr '\n' ' ')"
