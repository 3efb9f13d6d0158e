#!/usr/bin/env bash
# Device round of the dedicated CUDA SSD backward (session 7), one Python process (ssdbwd_round.py): the GPU
# gradient tests (kernel grid f32/f16/bf16 + variants + sums + bitwise, the test_ssd / test_ssd_split CUDA gradient
# rows), fwd+bwd timings at issue 6's shapes (states split on / off; poisoning off), the seed drivers of the two
# bf16 flakes (fresh seeds). Usage: benchmarks/device/ssdbwd.sh OUT_DIR (repo root, after the build; ~48 s)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/ssdbwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
timeout -k 1 47 $PY benchmarks/device/ssdbwd_round.py "$OUT" 35 > "$OUT/round.log" 2> "$OUT/round.err"
echo "round rc=$?"; grep -E "^TESTS" "$OUT/round.err" | cut -c1-700
grep -E "^\{| us  |^-- |H200|H100|budget" "$OUT/round.log" | cut -c1-1200
