#!/usr/bin/env bash
# Device round of engineer wgmma (session 10, issue 6): the SSD chunk output on wgmma (SSM_SSD_FWD_WGMMA=1 / 2).
# 1. wgmma_probe.cu (nvcc, ~3 s): ssd_wgmma.cuh's descriptor / swizzle / fragment rules on one 64 x 64 x 64 product
#    per operand layout against the host. 2. wgmma_round.py: y wgmma vs staged, kernel times staged / =1 / =2 side by
#    side, the GPU SSD forward tests with the switch on.
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
else
  tail -4 "$OUT/probe_build.log" | cut -c1-200
fi
T=$((47 - SECONDS))
timeout -k 1 $T $PY benchmarks/device/wgmma_round.py "$OUT/wgmma_s10.json" --budget $((T - 18)) > "$OUT/run.log" 2> "$OUT/run.err"
echo "round rc=$? at ${SECONDS}s"
grep -E "max err|probe" "$OUT/probe.log" | cut -c1-110
grep -E "^y |^ssd fwd|^  (staged|wgmma)|SUMMARY|step failed|budget" "$OUT/run.err" | cut -c1-300
grep -E "^FAILED|Error" "$OUT/run.log" | head -5 | cut -c1-300
