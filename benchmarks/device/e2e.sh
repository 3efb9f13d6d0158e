#!/usr/bin/env bash
# Device round of engineer e2e (issue 6: end-to-end GPU prefill and training): the CUDA tests of
# the fused Mamba-1 / Mamba-2 paths and the module consistency, then benchmarks/device/e2e_profile.py:
# per model the prefill (and the 130m training step) event time, host issue time, peak memory and a kernel table by category; the
# switches' variants timed in the same process. Runs from the repo root after the build, <= 50 s.
# Usage: benchmarks/device/e2e.sh OUT_DIR
set -uo pipefail
OUT=${1:-e2e_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
summary() { echo "$1 rc=$2 at ${SECONDS}s: $(grep -E "passed|failed|error" "$3" | tail -1 | cut -c1-200)"
            grep -E "^(FAILED|ERROR)|Error:|^E  " "$3" | head -8 | cut -c1-200; }
# no -x: a known bf16 flake (test_mamba_inner's [1-dtype2-cuda] gradient bound, seen in session 4 too) must
# not hide the other cases
timeout -k 2 -s INT 20 $PY -m pytest -q -p no:cacheprovider -rf -k "cuda and not compile and not long" \
  tests/ops/test_mamba_inner.py tests/ops/test_ssd_split.py tests/modules/test_consistency_cuda.py > "$OUT/pytest.log" 2>&1
summary "tests (inner, split, consistency)" $? "$OUT/pytest.log"
T=$((47 - SECONDS)); [ "$T" -gt 30 ] && T=30
# the budget counts from after the imports (~10 s): no new model or variant starts past it
timeout -k 2 $T $PY benchmarks/device/e2e_profile.py "$OUT" --budget $((T - 13)) > "$OUT/profile.log" 2> "$OUT/profile.err"
echo "profile rc=$? at ${SECONDS}s"
cut -c1-230 "$OUT/profile.log"
grep -vE "Warn|warn" "$OUT/profile.err" | tail -3 | cut -c1-200
