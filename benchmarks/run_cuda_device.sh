#!/usr/bin/env bash
# One call on the GPU machine: build the CUDA module, run every CUDA-marked test (ops, modules,
# generation, NCCL distributed tests when 2+ GPUs), compute-sanitizer (memcheck, racecheck) over a
# small slice of the op tests, and the CUDA benchmarks (kernels, SSD, end-to-end models).
# Usage: benchmarks/run_cuda_device.sh OUT_DIR [build,test,sanitize,bench]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
STEPS=${2:-build,test,sanitize,bench}
SANITIZE_K=${SANITIZE_K:-"cuda and dtype0 and (shape1 or layout1 or gradients)"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [[ $STEPS == *build* ]]; then
  start=$(date +%s)
  if ! SSM_BUILD_CUDA=on SSM_CUDA_ARCHS=${SSM_CUDA_ARCHS:-90} PYTHON=${PYTHON:-python3} scripts/build_inplace.sh \
      > "$OUT/build.log" 2>&1; then
    grep -E "error|Error" "$OUT/build.log" | head -30
    exit 1
  fi
  echo "build: $(( $(date +%s) - start )) s; $(tail -1 "$OUT/build.log")"
fi
if [[ $STEPS == *test* ]]; then
  timeout ${TEST_S:-420} python3 -m pytest tests -q -m cuda -p no:cacheprovider -rf > "$OUT/pytest.log" 2>&1
  grep -E "^FAILED|^ERROR|passed|failed" "$OUT/pytest.log" | cut -c1-300 | tail -62
fi
if [[ $STEPS == *sanitize* ]]; then
  for tool in memcheck racecheck; do
    timeout ${SAN_S:-170} compute-sanitizer --tool "$tool" --error-exitcode 9 python3 -m pytest tests/ops -q -m cuda -p no:cacheprovider \
      -k "$SANITIZE_K" > "$OUT/sanitizer_$tool.log" 2>&1
    echo "$tool rc=$?: $(grep -E "ERROR SUMMARY|passed|failed" "$OUT/sanitizer_$tool.log" | tail -2 | tr '\n' ' ')"
  done
fi
if [[ $STEPS == *bench* ]]; then
  for bench in bench_cuda bench_ssd_cuda bench_models_cuda; do
    timeout ${BENCH_S:-200} python3 benchmarks/$bench.py --out "$OUT/$bench.json" > "$OUT/$bench.log" 2>&1
    echo "$bench rc=$?"; tail -30 "$OUT/$bench.log" | cut -c1-300
  done
fi
