#!/usr/bin/env bash
# Device round for ssdfwd (issue 6, CUDA SSD forward, session 5): one Python process runs the forward
# GPU SSD tests with the staged chunk output switched on (SSM_SSD_FWD_STAGED=1), then the forward
# timings at B8 L2048 / B1 L8192 and the Mamba2 layer, defaults and staged (ssdfwd_tests.py --time);
# then ncu of the multi-head chunk state, the lean and the staged chunk outputs: stall reasons and the
# per-instruction source counters (SASS page as CSV, for the next session's instruction diet).
# Usage: ssdfwd.sh OUT_DIR (repo root, after the build; at most ~49 s).
set -uo pipefail
OUT=${1:-/tmp/ssdfwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
left() { echo $((${1} - SECONDS)); }
timeout -k 2 26 $PY benchmarks/device/ssdfwd_tests.py --time "$OUT/time.json" > "$OUT/run.log" 2> "$OUT/run.err"
echo "tests+timing rc=$? at ${SECONDS}s"
grep SUMMARY "$OUT/run.err" | cut -c1-700
grep -E "gpu .* ms, eager| ms  void" "$OUT/run.log" | sed 's/void ssm::cuda::ssd:://; s/(ssm::SsdParams.*//' | cut -c1-100
T=$(left 43)
if [ "$T" -gt 8 ]; then  # stall reasons and per-instruction source counters (SASS page as CSV)
  R=smsp__average_warps_issue_stalled
  M=$R"_barrier_per_issue_active.ratio,"$R"_long_scoreboard_per_issue_active.ratio,"$R"_short_scoreboard_per_issue_active.ratio"
  M=$M,$R"_math_pipe_throttle_per_issue_active.ratio,"$R"_mio_throttle_per_issue_active.ratio,"$R"_wait_per_issue_active.ratio"
  M=$M,$R"_not_selected_per_issue_active.ratio,"$R"_no_instruction_per_issue_active.ratio,"$R"_selected_per_issue_active.ratio"
  M=$M,smsp__inst_executed.sum,smsp__inst_executed_pipe_tensor.sum
  timeout -k 1 $T ncu --clock-control none -k 'regex:chunk_scan_(lean|staged)|chunk_state_heads' --launch-count 3 \
    --section SpeedOfLight --section WarpStateStats --section SourceCounters --metrics "$M" -f -o "$OUT/src" \
    $PY benchmarks/device/ssdfwd_ncu.py > "$OUT/ncu.log" 2>&1
  echo "ncu rc=$? at ${SECONDS}s"
  T=$(left 49)
  [ "$T" -gt 1 ] && timeout -k 1 $T ncu --import "$OUT/src.ncu-rep" > "$OUT/ncu.txt" 2>&1
  grep -E "^  [^ ].*\([0-9]+, [0-9]+, [0-9]+\)x\(|Duration|Warp Cycles Per Issued|smsp__" "$OUT/ncu.txt" | \
    sed 's/^ *//; s/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//; s/ \{2,\}/ /g' | cut -c1-90
  T=$(left 50)
  [ "$T" -gt 1 ] && timeout -k 1 $T ncu --import "$OUT/src.ncu-rep" --page source --print-source sass --csv \
    > "$OUT/src_sass.csv" 2>&1; echo "source page rc=$? $(wc -l < "$OUT/src_sass.csv") lines"
  gzip -f "$OUT/src_sass.csv"; rm -f "$OUT/src.ncu-rep"  # keep what comes back small
fi
