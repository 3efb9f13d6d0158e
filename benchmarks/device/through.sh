#!/usr/bin/env bash
# Device round of engineer `through` (session 10): first the seed study, the split's accuracy and the timings in one
# process (through_round.py; no NaN poisoning), then the SSD GPU tests with SSM_SSD_BWD_THROUGH=1 (the per-chunk
# through partials, the form to become the default) in a second process (-v: the counts survive a timeout).
# Usage: benchmarks/device/through.sh OUT_DIR (repo root, after the build; <= 50 s)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/through}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
timeout -k 1 25 $PY benchmarks/device/through_round.py "$OUT" 10 3.5 > "$OUT/round.log" 2> "$OUT/round.err"
echo "round rc=$? at ${SECONDS}s"
grep -E "^SEEDS|^SPLIT|^TIME" "$OUT/round.log" | cut -c1-240; tail -2 "$OUT/round.err" | cut -c1-240
SSM_SSD_BWD_THROUGH=1 timeout -k 1 $((47 - SECONDS)) $PY -m pytest -m cuda -p no:cacheprovider -v -rf \
  tests/ops/test_ssd_cuda.py tests/ops/test_ssd.py tests/ops/test_ssd_split.py > "$OUT/tests.log" 2>&1
echo "tests (THROUGH=1) rc=$? at ${SECONDS}s: $(grep -c ' PASSED' "$OUT/tests.log") passed, $(grep -c ' FAILED' "$OUT/tests.log") failed"
grep -E "^FAILED|^ERROR" "$OUT/tests.log" | head -5 | cut -c1-240
