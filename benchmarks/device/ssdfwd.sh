#!/usr/bin/env bash
# Device round for ssdfwd (issue 6, CUDA SSD forward, session 6). Process 1: the GPU SSD tests with the
# exact staged chunk output (test_ssd_split's CUDA rows first, then the forward rows of test_ssd_cuda /
# test_ssd and the bf16 kernel-backward grid), the error distribution of y over seeds (ssdfwd_seeds.py:
# exact vs session 5's kernel vs the low-precision reference), then repeats of the split file's f16 / bf16
# gradient rows while its budget lasts. Process 2 (no NaN poisoning): forward timings at B8 L2048 / B1 L8192,
# exact and SSM_SSD_FWD_EXACT=0, and without the eager plan (host time per call too). Then ncu of both staged chunk outputs (stall reasons, instruction counts).
# Usage: ssdfwd.sh OUT_DIR (repo root, after the build; at most ~49 s).
set -uo pipefail
OUT=${1:-/tmp/ssdfwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
left() { echo $((${1} - SECONDS)); }
timeout -k 2 21 $PY benchmarks/device/ssdfwd_tests.py --seeds "$OUT/seeds.json" --budget 16 > "$OUT/run.log" 2> "$OUT/run.err"
echo "tests+seeds rc=$? at ${SECONDS}s"
grep SUMMARY "$OUT/run.err" | cut -c1-600
grep -- "-- y err" "$OUT/run.log" | cut -c1-400
T=$(left 36)
timeout -k 1 $T $PY benchmarks/device/ssdfwd_time.py "$OUT/time.json" > "$OUT/time.log" 2>&1
echo "timing rc=$? at ${SECONDS}s"
grep -E "gpu .* ms, eager| ms  (void|chunk|state)" "$OUT/time.log" | sed 's/void ssm::cuda::ssd:://; s/(ssm::SsdParams.*//' | cut -c1-100
T=$(left 49)
if [ "$T" -gt 6 ]; then  # stall reasons of the exact and the session-5 staged chunk outputs
  R=smsp__average_warps_issue_stalled
  M=$R"_barrier_per_issue_active.ratio,"$R"_long_scoreboard_per_issue_active.ratio,"$R"_short_scoreboard_per_issue_active.ratio"
  M=$M,$R"_math_pipe_throttle_per_issue_active.ratio,"$R"_mio_throttle_per_issue_active.ratio,"$R"_wait_per_issue_active.ratio"
  M=$M,$R"_not_selected_per_issue_active.ratio,"$R"_selected_per_issue_active.ratio,"$R"_lg_throttle_per_issue_active.ratio"
  M=$M,smsp__inst_executed.sum,smsp__inst_executed_pipe_tensor.sum,lts__t_bytes.sum
  timeout -k 1 $T ncu --clock-control none -k 'regex:chunk_scan_staged' --launch-count 2 \
    --section SpeedOfLight --section WarpStateStats --section Occupancy --metrics "$M" \
    $PY benchmarks/device/ssdfwd_ncu.py > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$? at ${SECONDS}s"
  grep -E "^  [^ ].*\([0-9]+, [0-9]+, [0-9]+\)x\(|Duration|Warp Cycles Per Issued|Achieved Occupancy|smsp__|lts__t_bytes" "$OUT/ncu.txt" | \
    sed 's/^ *//; s/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//; s/ \{2,\}/ /g' | cut -c1-90
fi
