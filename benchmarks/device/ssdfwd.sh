#!/usr/bin/env bash
# Device round for ssdfwd (issue 6, CUDA SSD forward, session 4): the GPU SSD tests on the default
# kernels (lean chunk output, multi-head chunk state); on a failure the same file once per switch
# (SSM_SSD_FWD_LEAN=0, _CB16=0, _HEADS=0) to tell which kernel; the forward tests on the whole-chunk
# chunk output (SSM_SSD_FWD_FULL=1); the Mamba-2 module consistency tests and the fused Mamba-2
# path's CUDA rows; the forward timings (new; then at B8 both switches off, main's kernels, and the
# whole-chunk form); an ncu stall / source profile of the two new default kernels.
# Usage: ssdfwd.sh OUT_DIR (repo root, after the build; ~66 s).
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
FAILED=0
if grep -q " FAILED" "$OUT/pytest.log"; then
  FAILED=1
  for sw in SSM_SSD_FWD_LEAN SSM_SSD_FWD_CB16 SSM_SSD_FWD_HEADS; do
    env $sw=0 timeout 5 $PY -m pytest tests/ops/test_ssd_cuda.py -x -v -p no:cacheprovider > "$OUT/pytest_$sw.log" 2>&1
    echo "  with $sw=0 rc=$?: $(summary "$OUT/pytest_$sw.log")"
  done
fi
SSM_SSD_FWD_FULL=1 timeout 7 $PY -m pytest tests/ops/test_ssd_cuda.py -x -v -p no:cacheprovider \
  -k "not backward and not gradients and not bitwise" > "$OUT/pytest_full.log" 2>&1
echo "SSM_SSD_FWD_FULL=1: test_ssd_cuda.py forward tests (-x) rc=$?: $(summary "$OUT/pytest_full.log")"
grep -E "^FAILED|^E  " "$OUT/pytest_full.log" | head -3 | cut -c1-250
timeout 8 $PY -m pytest tests/modules/test_consistency_cuda.py tests/ops/test_ssd_split.py tests/ops/test_ssd.py -x -v \
  -p no:cacheprovider -k "mamba2 or (cuda and not compile)" > "$OUT/pytest_split.log" 2>&1
echo "test_consistency_cuda.py -k mamba2, test_ssd_split.py + test_ssd.py -k 'cuda and not compile' (-x, 8 s cap) rc=$?: $(summary "$OUT/pytest_split.log")"
grep -E "^FAILED|^E  " "$OUT/pytest_split.log" | head -4 | cut -c1-250
timeout 15 $PY benchmarks/device/ssdfwd_time.py "$OUT/time.json" > "$OUT/time.log" 2>&1
echo "timing rc=$?"; grep -vE "Warning|_warn_once" "$OUT/time.log" | cut -c1-140 | tail -20
SSM_SSD_FWD_LEAN=0 SSM_SSD_FWD_HEADS=0 timeout 6 $PY benchmarks/device/ssdfwd_time.py "$OUT/time_old.json" \
  --quick > "$OUT/time_old.log" 2>&1
echo "timing SSM_SSD_FWD_LEAN=0 SSM_SSD_FWD_HEADS=0 rc=$?"; grep -vE "Warning|_warn_once" "$OUT/time_old.log" | cut -c1-140 | tail -6
SSM_SSD_FWD_FULL=1 timeout 6 $PY benchmarks/device/ssdfwd_time.py "$OUT/time_full.json" --quick > "$OUT/time_full.log" 2>&1
echo "timing SSM_SSD_FWD_FULL=1 rc=$?"; grep -vE "Warning|_warn_once" "$OUT/time_full.log" | cut -c1-140 | tail -6
[ $FAILED = 1 ] && exit 0  # no time left for the profile
timeout -k 2 12 ncu --clock-control none -k regex:'chunk_scan_lean|chunk_state_heads' --launch-count 2 --section SpeedOfLight \
  --section Occupancy --section WarpStateStats --section SourceCounters --section InstructionStats \
  $PY benchmarks/device/ncu_driver.py ssd > "$OUT/ncu_lean.txt" 2>&1
echo "ncu rc=$?"; grep -E "^  [a-z].*\)x\(|Duration|Registers Per|Achieved Occupancy|Issue Slots Busy|Warp Cycles Per Issued|Executed Ipc A" \
  "$OUT/ncu_lean.txt" | cut -c1-120 | head -16
grep -E "^ +(OPT|WRN).*(stall|Stall)|cycles being stalled" "$OUT/ncu_lean.txt" | cut -c1-200 | head -10
