#!/usr/bin/env bash
# Device round for the CUDA selective-scan forward (issue 5, engineer scanfwd, session 5): the CUDA
# cases of the scan and layout tests (the row kernel's first), the forward / pre-pass kernel times
# at the bench shape with the row kernel and the block kernel in one process (outputs compared),
# then an ncu of fwd_rows_kernel while time is left. Runs from the repo root after the lead's
# build; logs and JSON into $1. At most ~50 s.
OUT=${1:-scanfwd_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
# the L = 16384 gradient test (a 16384-step float64 reference loop) does not fit the time limit
timeout -k 2 -s INT 20 $PY -m pytest -q -x -m cuda -p no:cacheprovider -rf -k "not long_sequence_cuda" \
  tests/ops/test_selective_scan_layouts.py tests/ops/test_selective_scan.py > "$OUT/pytest.log" 2>&1
echo "pytest rc=$? at ${SECONDS}s: $(grep -E "passed|failed|error" "$OUT/pytest.log" | tail -1)"
grep -E "^(FAILED|ERROR)|Error:|error |assert" "$OUT/pytest.log" | head -8 | cut -c1-300
timeout -k 2 16 $PY benchmarks/device/scanfwd_time.py --out "$OUT/time.json" > "$OUT/time.log" 2>&1
echo "time rc=$? at ${SECONDS}s"; grep -E "^(rows|block)|Error|Trace|error" "$OUT/time.log" | cut -c1-170 | tail -8
T=$((49 - SECONDS))
if [ "$T" -gt 8 ]; then
  R=smsp__average_warps_issue_stalled
  M=$R"_barrier_per_issue_active.ratio,"$R"_long_scoreboard_per_issue_active.ratio,"$R"_short_scoreboard_per_issue_active.ratio"
  M=$M,$R"_math_pipe_throttle_per_issue_active.ratio,"$R"_mio_throttle_per_issue_active.ratio,"$R"_wait_per_issue_active.ratio"
  M=$M,$R"_not_selected_per_issue_active.ratio,"$R"_dispatch_stall_per_issue_active.ratio,"$R"_lg_throttle_per_issue_active.ratio"
  M=$M,smsp__inst_executed.sum,smsp__inst_executed_pipe_xu.sum,smsp__sass_inst_executed_op_local_ld.sum
  timeout -k 1 $T ncu --clock-control none -k regex:fwd_rows_kernel --launch-count 1 --section SpeedOfLight \
    --section Occupancy --section SchedulerStats --section WarpStateStats --metrics "$M" \
    $PY benchmarks/device/ncu_driver.py scan > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$? at ${SECONDS}s"
  grep -E "^  [^ ].*\([0-9]+, [0-9]+, [0-9]+\)x\(|Duration|Registers Per|Achieved Active Warps|Issue Slots Busy|Eligible Warps|Warp Cycles Per Issued|smsp__" \
    "$OUT/ncu.txt" | sed 's/^ *//; s/ \{2,\}/ /g' | cut -c1-110 | head -24
fi
