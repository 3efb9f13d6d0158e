#!/usr/bin/env bash
# Device round of engineer `through` (session 10): first the SSD GPU tests (the per-chunk through partials are the
# only form since round 1b; -v: the counts survive a timeout), then the seed study of the float32 dA tests and the
# timings (through_round.py; no NaN poisoning), then the SSD backward tests with the states rounded once
# (SSM_SSD_BWD_SPLIT=0: what removing the split would do against the tests' bounds).
# Usage: benchmarks/device/through.sh OUT_DIR (repo root, after the build; <= 50 s)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/through}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
timeout -k 1 24 $PY -m pytest -m cuda -p no:cacheprovider -v -rf tests/ops/test_ssd_cuda.py tests/ops/test_ssd.py \
  tests/ops/test_ssd_split.py tests/modules/test_consistency_cuda.py > "$OUT/tests.log" 2>&1
echo "tests rc=$? at ${SECONDS}s: $(grep -c ' PASSED' "$OUT/tests.log") passed, $(grep -c ' FAILED' "$OUT/tests.log") failed"
grep -E "^FAILED|^ERROR" "$OUT/tests.log" | head -5 | cut -c1-240 || true
timeout -k 1 14 $PY benchmarks/device/through_round.py "$OUT" 3 0 > "$OUT/round.log" 2> "$OUT/round.err"
echo "round rc=$? at ${SECONDS}s"
grep -E "^SEEDS|^TIME" "$OUT/round.log" | cut -c1-240; tail -1 "$OUT/round.err" | cut -c1-240
SSM_SSD_BWD_SPLIT=0 timeout -k 1 $((48 - SECONDS)) $PY -m pytest -m cuda -p no:cacheprovider -v -rf \
  tests/ops/test_ssd_cuda.py tests/ops/test_ssd.py -k "(backward or gradients) and not f32" > "$OUT/tests_split0.log" 2>&1
echo "tests (SPLIT=0) rc=$? at ${SECONDS}s: $(grep -c ' PASSED' "$OUT/tests_split0.log") passed, $(grep -c ' FAILED' "$OUT/tests_split0.log") failed"
grep -E "^FAILED|^ERROR" "$OUT/tests_split0.log" | head -4 | cut -c1-240; true
