#!/usr/bin/env bash
# Device round for ssdfwd (issue 6, CUDA SSD forward): the GPU SSD tests (-x), the fused Mamba-2
# path's CUDA rows, then the forward timings: default kernels (mma chunk state / output with the
# precomputed C B^T), then the B8 case with C B^T per head (SSM_SSD_FWD_CB=0).
# Usage: ssdfwd.sh OUT_DIR (repo root, after the build; ~60 s).
set -uo pipefail
OUT=${1:-/tmp/ssdfwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
summary() {  # counts of a verbose pytest log
  echo "$(grep -c " PASSED" "$1") passed, $(grep -c " FAILED" "$1") failed; last: $(grep -E "PASSED|FAILED" "$1" | tail -1 | cut -c1-110)"
}
timeout 24 $PY -m pytest tests/ops/test_ssd_cuda.py -x -v -p no:cacheprovider --durations=15 > "$OUT/pytest.log" 2>&1
rc=$?
echo "test_ssd_cuda.py (whole file in order, -x, 24 s cap) rc=$rc: $(summary "$OUT/pytest.log")"
grep -E "^FAILED|^E  " "$OUT/pytest.log" | head -6 | cut -c1-300
if [ $rc -eq 1 ]; then  # a failure: is it the precomputed C B^T or the mma kernels?
  SSM_SSD_FWD_CB=0 timeout 8 $PY -m pytest tests/ops/test_ssd_cuda.py -x -q -p no:cacheprovider \
    -k "model_sizes or token_major" > "$OUT/pytest_cb0.log" 2>&1
  echo "  with SSM_SSD_FWD_CB=0 (model_sizes, token_major) rc=$?: $(tail -1 "$OUT/pytest_cb0.log")"
else
  timeout 8 $PY -m pytest tests/ops/test_ssd_split.py -x -v -p no:cacheprovider -k cuda > "$OUT/pytest_split.log" 2>&1
  echo "test_ssd_split.py -k cuda (-x, 8 s cap) rc=$?: $(summary "$OUT/pytest_split.log")"
  grep -E "^FAILED|^E  " "$OUT/pytest_split.log" | head -4 | cut -c1-300
fi
timeout 17 $PY benchmarks/device/ssdfwd_time.py "$OUT/time.json" > "$OUT/time.log" 2>&1
echo "timing rc=$?"; cut -c1-150 "$OUT/time.log" | tail -21
SSM_SSD_FWD_CB=0 timeout 9 $PY benchmarks/device/ssdfwd_time.py "$OUT/time_cb0.json" --quick > "$OUT/time_cb0.log" 2>&1
echo "timing SSM_SSD_FWD_CB=0 rc=$?"; cut -c1-150 "$OUT/time_cb0.log" | tail -7
