#!/usr/bin/env bash
# Device round for the split-state CUDA selective-scan backward (issue 5, selective_scan_bwd_pair.cuh):
# the CUDA scan / mamba_inner gradient tests, then the backward kernel's time and fwd+bwd at the
# bench shape and the mamba-130m shape against the previous kernel (SSM_SCAN_BWD_PAIR=0, same run),
# then a short ncu of the new kernel. Runs from the repo root after the lead's build; logs into $1;
# a summary of ~12 lines at the end of stdout.
OUT=${1:-scanbwd_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
# the L = 16384 gradient test (a 16384-step float64 reference loop) does not fit the time limit
timeout -k 3 -s INT 33 $PY -m pytest -q --maxfail=5 -m cuda -p no:cacheprovider -rf -k "not long_sequence_cuda" \
  tests/ops/test_selective_scan.py tests/ops/test_selective_scan_layouts.py tests/ops/test_mamba_inner.py \
  > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest.log"
timeout -k 2 19 $PY benchmarks/device/scanbwd_bench.py --out "$OUT/scanbwd.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?" >> "$OUT/bench.log"
timeout -k 2 14 ncu --clock-control none -k regex:pair_bwd_kernel --launch-count 1 --section SpeedOfLight \
  --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
  --section ComputeWorkloadAnalysis \
  --metrics 'smsp__inst_executed.sum,regex:^smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio$' \
  $PY benchmarks/device/ncu_driver.py scan > "$OUT/ncu.txt" 2>&1
echo "ncu rc=$?" >> "$OUT/ncu.txt"
# summary
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -4 | cut -c1-200
echo "$(tail -1 "$OUT/pytest.log"): $(grep -E "passed|failed|error|skipped" "$OUT/pytest.log" | tail -1)"
grep -E "fwd\+bwd event|rc=" "$OUT/bench.log" | cut -c1-110
grep -E "ncu rc|Duration|Executed Ipc Active|Achieved Active Warps|inst_executed.sum" "$OUT/ncu.txt" | cut -c1-90 | tr -s ' '
grep -E "issue_stalled" "$OUT/ncu.txt" | awk '{print $NF, $1}' | sort -rn | head -4 |
  sed 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' | tr '\n' ';'
echo
