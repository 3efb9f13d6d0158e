#!/usr/bin/env bash
# Device round of engineer `through` (session 10): first the SSD GPU tests (the per-chunk through partials are the
# only form since round 2; -v: the counts survive a timeout), then the seed study of the float32 dA tests, the
# split's accuracy and the timings in a second process (through_round.py; no NaN poisoning).
# Usage: benchmarks/device/through.sh OUT_DIR (repo root, after the build; <= 50 s)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/through}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
timeout -k 1 27 $PY -m pytest -m cuda -p no:cacheprovider -v -rf tests/ops/test_ssd_cuda.py tests/ops/test_ssd.py \
  tests/ops/test_ssd_split.py tests/modules/test_mamba2.py > "$OUT/tests.log" 2>&1
echo "tests rc=$? at ${SECONDS}s: $(grep -c ' PASSED' "$OUT/tests.log") passed, $(grep -c ' FAILED' "$OUT/tests.log") failed"
grep -E "^FAILED|^ERROR" "$OUT/tests.log" | head -5 | cut -c1-240 || true
timeout -k 1 $((48 - SECONDS)) $PY benchmarks/device/through_round.py "$OUT" 6 3 > "$OUT/round.log" 2> "$OUT/round.err"
echo "round rc=$? at ${SECONDS}s"
grep -E "^SEEDS|^SPLIT|^TIME" "$OUT/round.log" | cut -c1-240; tail -2 "$OUT/round.err" | cut -c1-240; true
