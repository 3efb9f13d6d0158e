#!/usr/bin/env bash
# Device round for the split-state CUDA selective-scan backward (issue 5, selective_scan_bwd_thread.cuh):
# the CUDA scan / mamba_inner gradient tests, then the backward kernel's time and fwd+bwd at the
# bench shape and the mamba-130m shape, then a short ncu of the kernel. Runs from the repo root after
# the lead's build; logs into $1; a summary of ~12 lines at the end of stdout.
OUT=${1:-scanbwd_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
# the CUDA tests but the L = 16384 gradient test (a 16384-step float64 reference loop)
timeout -k 3 -s INT 25 $PY -m pytest -q --maxfail=5 -m cuda -p no:cacheprovider -rf -k "not long_sequence_cuda" \
  tests/ops/test_selective_scan.py tests/ops/test_selective_scan_layouts.py tests/ops/test_mamba_inner.py \
  > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest.log"
# then the L = 16384 gradient test alone, as far as 12 s take it
timeout -k 2 -s INT 12 $PY -m pytest -q -m cuda -p no:cacheprovider -rf -k "long_sequence_cuda" \
  tests/ops/test_selective_scan.py > "$OUT/pytest_long.log" 2>&1
echo "pytest long rc=$?" >> "$OUT/pytest_long.log"
timeout -k 2 16 $PY benchmarks/device/scanbwd_bench.py --out "$OUT/scanbwd.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?" >> "$OUT/bench.log"
timeout -k 2 13 ncu --clock-control none -k regex:bwd_kernel --launch-count 1 --section SpeedOfLight \
  --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
  --section ComputeWorkloadAnalysis \
  --metrics 'smsp__inst_executed.sum,regex:^smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio$' \
  $PY benchmarks/device/ncu_driver.py scan > "$OUT/ncu.txt" 2>&1
echo "ncu rc=$?" >> "$OUT/ncu.txt"
# summary
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -4 | cut -c1-200
echo "$(tail -1 "$OUT/pytest.log"): $(grep -E "passed|failed|error|skipped" "$OUT/pytest.log" | tail -1)"
echo "$(tail -1 "$OUT/pytest_long.log"): $(grep -E "passed|failed|error|skipped" "$OUT/pytest_long.log" | tail -1)"
grep -E "fwd\+bwd event|rc=" "$OUT/bench.log" | cut -c1-110
grep -E "ncu rc|Duration|Executed Ipc Active|Achieved Active Warps|inst_executed.sum" "$OUT/ncu.txt" | cut -c1-90 | tr -s ' '
grep -E "issue_stalled" "$OUT/ncu.txt" | awk '{print $NF, $1}' | sort -rn | head -4 |
  sed 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' | tr '\n' ';'
echo
