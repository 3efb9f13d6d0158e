#!/usr/bin/env bash
# Device round for ssdfwd (issue 6, CUDA SSD forward, session 9, round 2). Process 1: the GPU SSD tests on the default
# kernels (the tiled exact chunk output: test_ssd_split's CUDA rows, the forward rows of test_ssd_cuda / test_ssd, the
# bf16 kernel-backward grid), y's error over a few seeds (default and H_in hi + lo), the same tests with H_in hi + lo.
# Process 2 (no NaN poisoning): forward timings at B8 L2048 / B1 L8192, default and hi + lo, and the Mamba2 layer.
# Then ncu of the chunk output (one launch: stall reasons, instruction counts).
# Usage: ssdfwd.sh OUT_DIR (repo root, after the build; at most ~49 s).
set -uo pipefail
OUT=${1:-/tmp/ssdfwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
left() { echo $((${1} - SECONDS)); }
timeout -k 2 22 $PY benchmarks/device/ssdfwd_tests.py --seeds "$OUT/seeds.json" 2 --budget 0 > "$OUT/run.log" 2> "$OUT/run.err"
echo "tests+seeds rc=$? at ${SECONDS}s"
grep -E "SUMMARY|failed.: [1-9]" "$OUT/run.err" | cut -c1-600
grep -E "^FAILED|Error" "$OUT/run.log" | head -5 | cut -c1-300
grep -- "-- y err" "$OUT/run.log" | cut -c1-600
T=$(left 34)
timeout -k 1 $T $PY benchmarks/device/ssdfwd_time.py "$OUT/time.json" --layer > "$OUT/time.log" 2>&1
echo "timing rc=$? at ${SECONDS}s"
grep -E "gpu .* ms, eager| ms  (void|chunk|state)" "$OUT/time.log" | \
  sed 's/void ssm::cuda::ssd:://; s/(ssm::SsdParams.*//' | cut -c1-100
T=$(left 47)
if [ "$T" -gt 7 ]; then  # stall reasons and instruction counts of the chunk output and C B^T
  R=smsp__average_warps_issue_stalled
  M=$R"_barrier_per_issue_active.ratio,"$R"_long_scoreboard_per_issue_active.ratio,"$R"_short_scoreboard_per_issue_active.ratio"
  M=$M,$R"_math_pipe_throttle_per_issue_active.ratio,"$R"_mio_throttle_per_issue_active.ratio,"$R"_wait_per_issue_active.ratio"
  M=$M,$R"_not_selected_per_issue_active.ratio,"$R"_selected_per_issue_active.ratio,"$R"_dispatch_stall_per_issue_active.ratio"
  M=$M,smsp__inst_executed.sum,smsp__inst_executed_pipe_tensor.sum,lts__t_bytes.sum
  timeout -k 1 $T ncu --clock-control none -k 'regex:chunk_scan_staged|chunk_cb' --launch-count 2 \
    --section SpeedOfLight --section WarpStateStats --metrics "$M" -f -o "$OUT/src" \
    $PY benchmarks/device/ssdfwd_ncu.py > "$OUT/ncu.log" 2>&1
  echo "ncu rc=$? at ${SECONDS}s"
  T=$(left 49)
  [ "$T" -gt 0 ] && timeout -k 1 $T ncu --import "$OUT/src.ncu-rep" > "$OUT/ncu.txt" 2>&1
  grep -E "^  [^ ].*\([0-9]+, [0-9]+, [0-9]+\)x\(|Duration|Warp Cycles Per Issued|smsp__|lts__" "$OUT/ncu.txt" | \
    sed 's/^ *//; s/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//; s/ \{2,\}/ /g' | cut -c1-90
  rm -f "$OUT/src.ncu-rep"  # keep what comes back small
fi
