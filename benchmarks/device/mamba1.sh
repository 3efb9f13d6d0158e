#!/usr/bin/env bash
# Device round of engineer mamba1 (issue 6: Mamba-1 prefill / training end to end): the CUDA tests of
# the fused Mamba-1 path first, then benchmarks/device/mamba1_round.py (prefill / train timed in one
# process, kernel tables, where the copies come from, the bf16 gradient error over seeds). <= 50 s.
# Usage: benchmarks/device/mamba1.sh OUT_DIR
set -uo pipefail
OUT=${1:-mamba1_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
summary() { echo "$1 rc=$2 at ${SECONDS}s: $(grep -E "passed|failed|error" "$3" | tail -1 | cut -c1-200)"
            grep -E "^(FAILED|ERROR)|Error:|^E  " "$3" | head -8 | cut -c1-200; }
timeout -k 2 -s INT 17 $PY -m pytest -q -p no:cacheprovider -rf -k "cuda and not mamba2" \
  tests/ops/test_mamba_inner.py tests/modules/test_consistency_cuda.py > "$OUT/pytest.log" 2>&1
summary "tests (mamba_inner, consistency)" $? "$OUT/pytest.log"
T=$((48 - SECONDS)); [ "$T" -gt 31 ] && T=31
# the budget counts from the script's imports (~10 s): no new model or sweep seed starts past it
timeout -k 2 $T $PY benchmarks/device/mamba1_round.py "$OUT" --budget $((T - 12)) > "$OUT/round.log" 2> "$OUT/round.err"
echo "round rc=$? at ${SECONDS}s"
cut -c1-200 "$OUT/round.log"
grep -vE "Warn|warn" "$OUT/round.err" | tail -3 | cut -c1-200
