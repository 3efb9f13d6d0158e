#!/usr/bin/env bash
# Device round of engineer wgmma (session 10, issue 6): the SSD chunk output and chunk state on wgmma (default on
# sm_90a; SSM_SSD_WGMMA=0: the mma.sync kernels). 1. wgmma_probe.cu (nvcc, ~3 s): ssd_wgmma.cuh's descriptor /
# swizzle / fragment rules against the host. 2. wgmma_round.py: y wgmma vs mma.sync, kernel times side by side, the
# GPU SSD tests. 3. ncu of the two wgmma kernels (instructions, cycles per issue, stalls) while time is left.
# Usage: wgmma.sh OUT_DIR (repo root, after the build; at most ~48 s).
set -uo pipefail
OUT=${1:-/tmp/wgmma}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
timeout -k 1 12 "$NVCC" -std=c++17 -O2 -gencode=arch=compute_90a,code=sm_90a -Issm/ops \
  -o "$OUT/wgmma_probe" benchmarks/device/wgmma_probe.cu > "$OUT/probe_build.log" 2>&1
echo "probe build rc=$? at ${SECONDS}s"
if [ -x "$OUT/wgmma_probe" ]; then
  timeout -k 1 4 "$OUT/wgmma_probe" > "$OUT/probe.log" 2>&1; echo "probe rc=$? at ${SECONDS}s"
  rm -f "$OUT/wgmma_probe"
fi
T=$((36 - SECONDS))
timeout -k 1 $T $PY benchmarks/device/wgmma_round.py "$OUT/wgmma_s10.json" --budget $((T - 6)) > "$OUT/run.log" 2> "$OUT/run.err"
echo "round rc=$? at ${SECONDS}s"
T=$((47 - SECONDS))
if [ "$T" -gt 7 ]; then
  R=smsp__average_warps_issue_stalled
  M=$R"_barrier_per_issue_active.ratio,"$R"_long_scoreboard_per_issue_active.ratio,"$R"_short_scoreboard_per_issue_active.ratio"
  M=$M,$R"_math_pipe_throttle_per_issue_active.ratio,"$R"_wait_per_issue_active.ratio,"$R"_not_selected_per_issue_active.ratio"
  M=$M,smsp__inst_executed.sum,smsp__inst_executed_pipe_tensor.sum
  timeout -k 1 $T ncu --clock-control none -k 'regex:chunk_scan_wgmma|chunk_state_heads' --launch-count 2 \
    --section SpeedOfLight --section WarpStateStats --metrics "$M" $PY benchmarks/device/ssdfwd_ncu.py > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$? at ${SECONDS}s"
fi
grep -E "max err|probe" "$OUT/probe.log" | cut -c1-110 | head -3
grep -E "^y |^ssd fwd|^  (wgmma|mma)|SUMMARY|step failed|budget" "$OUT/run.err" | cut -c1-300
grep -E "^  [^ ].*\([0-9]+, [0-9]+, [0-9]+\)x\(|Duration|Warp Cycles Per Issued|smsp__" "$OUT/ncu.txt" 2>/dev/null | sed 's/^ *//; s/smsp__average_warps_issue_stalled_//; s/ \{2,\}/ /g' | cut -c1-100
