#!/usr/bin/env bash
# Device round for the CUDA selective scan in Mamba-1 training and prefill (issues 5, 6; engineer scan,
# session 7), round 2: benchmarks/device/scan_round.py --final in ONE python process: the GPU tests of
# test_selective_scan_layouts (forced kernel forms first), test_mamba_inner and test_selective_scan (stopped
# after 17 s), then without NaN poisoning the backward handoff check, mamba-130m training (checkpoint levels 1
# and 2) and mamba-1.4b prefill (one and two channels per thread), the kernels at the bench shape and the model
# shapes (row forward with one and two channels per thread); then, in the time left, ncu of pair_bwd_kernel at
# D 1536 (benchmarks/device/scan_ncu.py). From the repo root after the lead's build;
# logs and JSON into $1; at most ~50 s.
OUT=${1:-scan_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
timeout -k 2 -s INT 37 $PY benchmarks/device/scan_round.py "$OUT" --test-budget 17 --budget 27 --final \
  > "$OUT/round.log" 2> "$OUT/round.err"
echo "round rc=$? at ${SECONDS}s"
grep -E "passed|failed|error" "$OUT/round.log" | grep -vE "^(FAILED|ERROR)" | tail -2 | cut -c1-200
grep -E "^(FAILED|ERROR)" "$OUT/round.log" | head -8 | cut -c1-240
grep -E "^(pytest rc|handoff|model |bench |mamba|done|NVIDIA)" "$OUT/round.log" | cut -c1-240
grep -vE "Warn|warn" "$OUT/round.err" | tail -3 | cut -c1-200
T=$((48 - SECONDS))
if [ "$T" -gt 11 ]; then
  timeout -k 1 $T ncu --clock-control none -k regex:pair_bwd_kernel --launch-count 1 --section SpeedOfLight \
    --section Occupancy --section WarpStateStats --section SchedulerStats --section SourceCounters \
    $PY benchmarks/device/scan_ncu.py 1536 > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$? at ${SECONDS}s"
  grep -E "Duration|Issue Slots Busy|Achieved Occupancy|No Eligible|Warp Cycles Per Issued|Stall" "$OUT/ncu.txt" | head -10 | cut -c1-160
fi
