#!/usr/bin/env bash
# Device round of the dedicated CUDA SSD backward (session 7), one Python process (ssdbwd_round.py): the GPU
# gradient tests (kernel grid f32/f16/bf16 + variants + sums + bitwise, the test_ssd / test_ssd_split CUDA gradient
# rows), fwd+bwd timings at issue 6's shapes (states split on / off; poisoning off), the seed drivers of the two
# bf16 flakes; then ncu of bwd_state and dx (split on).
# Usage: benchmarks/device/ssdbwd.sh OUT_DIR (repo root, after the build; ~49 s)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/ssdbwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
timeout -k 1 36 $PY benchmarks/device/ssdbwd_round.py "$OUT" 25 > "$OUT/round.log" 2> "$OUT/round.err"
echo "round rc=$?"; grep -E "^TESTS" "$OUT/round.err" | cut -c1-700
grep -E "^\{| us  |^-- |H200|H100|budget" "$OUT/round.log" | cut -c1-1200
timeout -k 1 12 ncu --clock-control none -k "regex:bwd_(state|dx_mma)_kernel" --launch-count 2 \
  --section SpeedOfLight --section WarpStateStats --section Occupancy --section MemoryWorkloadAnalysis \
  $PY benchmarks/device/ncu_driver.py ssd > "$OUT/ncu.txt" 2>&1
echo "ncu rc=$?"; grep -E "bwd_[a-z_]*_kernel<|Duration|Warp Cycles Per Issued|Achieved Occupancy|DRAM Throughput|Memory Throughput|L2 Hit" \
  "$OUT/ncu.txt" | cut -c1-110 | head -24
