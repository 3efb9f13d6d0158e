#!/usr/bin/env bash
# Device round for ssdfwd (issue 6, CUDA SSD forward): the GPU SSD tests on the default kernels, a
# forward subset on the round-1 kernels (SSM_SSD_FWD_PASS4=0), the fused Mamba-2
# path's CUDA rows, then the forward timings (default; then the round-1 kernels at B8).
# Usage: ssdfwd.sh OUT_DIR (repo root, after the build; ~55 s).
set -uo pipefail
OUT=${1:-/tmp/ssdfwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
summary() {  # counts of a verbose pytest log
  echo "$(grep -c " PASSED" "$1") passed, $(grep -c " FAILED" "$1") failed; last: $(grep -E "PASSED|FAILED" "$1" | tail -1 | cut -c1-100)"
}
timeout 12 $PY -m pytest tests/ops/test_ssd_cuda.py -x -v -p no:cacheprovider > "$OUT/pytest.log" 2>&1
echo "test_ssd_cuda.py (whole file, -x) rc=$?: $(summary "$OUT/pytest.log")"
grep -E "^FAILED|^E  " "$OUT/pytest.log" | head -5 | cut -c1-250
SSM_SSD_FWD_PASS4=0 timeout 9 $PY -m pytest tests/ops/test_ssd_cuda.py -x -v -p no:cacheprovider \
  -k "model_sizes or token_major or seq_idx or varlen or graph" > "$OUT/pytest_r1kernels.log" 2>&1
echo "  round-1 kernels (PASS4=0) forward subset rc=$?: $(summary "$OUT/pytest_r1kernels.log")"
timeout 10 $PY -m pytest tests/ops/test_ssd_split.py -x -v -p no:cacheprovider -k "cuda and not compile" \
  > "$OUT/pytest_split.log" 2>&1
echo "test_ssd_split.py -k 'cuda and not compile' (-x, 10 s cap) rc=$?: $(summary "$OUT/pytest_split.log")"
grep -E "^FAILED|^E  " "$OUT/pytest_split.log" | head -4 | cut -c1-250
timeout 17 $PY benchmarks/device/ssdfwd_time.py "$OUT/time.json" > "$OUT/time.log" 2>&1
echo "timing rc=$?"; grep -vE "Warning|_warn_once" "$OUT/time.log" | cut -c1-140 | tail -20
SSM_SSD_FWD_PASS4=0 timeout 9 $PY benchmarks/device/ssdfwd_time.py "$OUT/time_r1.json" --quick \
  > "$OUT/time_r1.log" 2>&1
echo "timing round-1 kernels rc=$?"; grep -vE "Warning|_warn_once" "$OUT/time_r1.log" | cut -c1-140 | tail -6
