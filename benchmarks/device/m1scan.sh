#!/usr/bin/env bash
# Device round of engineer m1scan (session 10; issue 6: the Mamba-1 scan forward at prefill shapes), <= 50 s:
# the SASS census of the forward kernels (benchmarks/device/m1scan_sass.py), the GPU tests of the scan's kernel
# forms (test_selective_scan_layouts: forced forms incl. the thread-per-channel kernel w / p, its bitwise match with
# the row kernel, the checkpoint handoff, the model widths), then benchmarks/device/m1scan_round.py (the forms at
# D 4096 / 1536 side by side, mamba-1.4b / mamba-130m prefill), then ncu of the wide kernel if time is left.
# Usage: benchmarks/device/m1scan.sh OUT_DIR (from the repo root, after the lead's build)
set -uo pipefail
OUT=${1:-m1scan_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader | head -1
timeout -k 1 8 $PY benchmarks/device/m1scan_sass.py --dump "$OUT" > "$OUT/sass.txt" 2>&1
echo "sass rc=$? at ${SECONDS}s"; grep -E "whole|loop" "$OUT/sass.txt" | cut -c1-200 | head -12 > "$OUT/sass_short.txt"
timeout -k 2 -s INT 20 $PY -m pytest -q -m cuda -p no:cacheprovider -rf -k "not long" \
  tests/ops/test_selective_scan_layouts.py tests/ops/test_selective_scan.py > "$OUT/pytest.log" 2>&1
echo "tests rc=$? at ${SECONDS}s: $(grep -E "passed|failed|error" "$OUT/pytest.log" | tail -1 | cut -c1-160)"
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -4 | cut -c1-200
T=$((46 - SECONDS)); [ "$T" -gt 26 ] && T=26
timeout -k 2 $T $PY benchmarks/device/m1scan_round.py "$OUT" --budget $((T - 6)) > "$OUT/round.log" 2> "$OUT/round.err"
echo "round rc=$? at ${SECONDS}s"
grep -vE "Warn|warn" "$OUT/round.err" | tail -2 | cut -c1-200
T=$((49 - SECONDS))
if [ "$T" -gt 8 ]; then
  timeout -k 1 $T ncu --clock-control none -k regex:fwd_wide_kernel --launch-count 1 --section SpeedOfLight \
    --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis --section Occupancy \
    --metrics smsp__inst_executed_pipe_xu.sum,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio,smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio,smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio \
    $PY benchmarks/device/m1scan_ncu.py > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$? at ${SECONDS}s: $(grep -E "^ +Duration" "$OUT/ncu.txt" | head -1 | tr -s ' ')"
fi
grep -E "D1536|130m" "$OUT/round.log" | cut -c1-150
grep -E "D4096|1.4b|done" "$OUT/round.log" | cut -c1-150
