#!/usr/bin/env bash
# Device round for the CUDA selective-scan forward (issue 5, engineer scanfwd): the CUDA-marked
# scan / layout / mamba_inner tests, forward and pre-pass kernel times at the bench and model
# shapes, a short ncu of the forward and pre-pass, then the forward's per-instruction stall
# samples while time is left. Runs from the repo root after the lead's build;
# logs and JSON into $1. At most ~68 s.
OUT=${1:-scanfwd_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
left() { echo $((${1} - SECONDS)); }
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
# the L = 16384 gradient test (a 16384-step float64 reference loop) does not fit the time limit
timeout -k 3 -s INT 33 $PY -m pytest -q -x -m cuda -p no:cacheprovider -rf -k "not long_sequence_cuda" \
  tests/ops/test_selective_scan_layouts.py tests/ops/test_selective_scan.py tests/ops/test_mamba_inner.py \
  > "$OUT/pytest.log" 2>&1
echo "pytest rc=$? at ${SECONDS}s: $(grep -E "passed|failed|error" "$OUT/pytest.log" | tail -1)"
grep -E "^(FAILED|ERROR)|Error:|error |assert" "$OUT/pytest.log" | head -8 | cut -c1-300
timeout -k 2 14 $PY benchmarks/device/scanfwd_time.py --out "$OUT/time_block.json" --tag block > "$OUT/time_block.log" 2>&1
echo "time block rc=$? at ${SECONDS}s"; cut -c1-170 "$OUT/time_block.log" | tail -3
T=$(left 62); [ "$T" -gt 20 ] && T=20
if [ "$T" -gt 8 ]; then
  R=smsp__average_warps_issue_stalled
  M=$R"_barrier_per_issue_active.ratio,"$R"_long_scoreboard_per_issue_active.ratio,"$R"_short_scoreboard_per_issue_active.ratio"
  M=$M,$R"_math_pipe_throttle_per_issue_active.ratio,"$R"_mio_throttle_per_issue_active.ratio,"$R"_wait_per_issue_active.ratio"
  M=$M,$R"_not_selected_per_issue_active.ratio,"$R"_dispatch_stall_per_issue_active.ratio,"$R"_lg_throttle_per_issue_active.ratio"
  M=$M,smsp__inst_executed.sum,smsp__inst_executed_pipe_xu.sum,smsp__sass_inst_executed_op_local_ld.sum
  timeout -k 2 $T ncu --clock-control none -k regex:fwd_block_kernel --launch-count 2 --section SpeedOfLight \
    --section LaunchStats --section Occupancy --section SchedulerStats --section WarpStateStats --metrics "$M" \
    $PY benchmarks/device/ncu_driver.py scan > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$? at ${SECONDS}s"
  grep -E "^  [^ ].*\([0-9]+, [0-9]+, [0-9]+\)x\(|Duration|Registers Per|Achieved Active Warps|Issue Slots Busy|Eligible Warps|Warp Cycles Per Issued|smsp__" \
    "$OUT/ncu.txt" | sed 's/^ *//; s/ \{2,\}/ /g' | cut -c1-110 | head -40
fi
T=$(left 67)
if [ "$T" -gt 8 ]; then  # per-instruction stall samples of the forward (SASS source page)
  timeout -k 1 $T ncu --clock-control none -k regex:fwd_block_kernel --launch-count 1 --section SourceCounters \
    --section WarpStateStats -f -o "$OUT/fwd_src" $PY benchmarks/device/ncu_driver.py scan > "$OUT/ncu_src.log" 2>&1
  echo "ncu source rc=$? at ${SECONDS}s"
  T=$(left 69); [ "$T" -gt 1 ] && timeout -k 1 $T ncu --import "$OUT/fwd_src.ncu-rep" --page source --print-source sass \
    --csv > "$OUT/fwd_src_sass.csv" 2>&1; echo "source page rc=$? $(wc -l < "$OUT/fwd_src_sass.csv") lines"
fi
