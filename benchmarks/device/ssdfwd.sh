#!/usr/bin/env bash
# Device round for ssdfwd (issue 6, CUDA SSD forward): the GPU SSD tests (-x), then the forward
# timings (new kernel; the old wmma one with SSM_SSD_FWD_MMA=0). Usage: ssdfwd.sh OUT_DIR
# (runs from the repo root after the lead's build; at most ~60 s).
set -uo pipefail
OUT=${1:-/tmp/ssdfwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
timeout 30 $PY -m pytest tests/ops/test_ssd_cuda.py -x -q -p no:cacheprovider --durations=12 > "$OUT/pytest.log" 2>&1
echo "test_ssd_cuda.py (whole file, -x, 30 s cap) rc=$?: $(grep -E "passed|failed|error" "$OUT/pytest.log" | tail -1)"
grep -E "^FAILED|^E  " "$OUT/pytest.log" | head -8 | cut -c1-300
timeout 20 $PY benchmarks/device/ssdfwd_time.py "$OUT/time.json" > "$OUT/time.log" 2>&1
echo "timing rc=$?"; cut -c1-160 "$OUT/time.log" | tail -24
