#!/usr/bin/env bash
# Device round script of the batch-64 decode work (session 8, engineer decode64b; runs after the lead's build, from
# the repo root, <= 50 s). Three processes: 1. pytest: batch_decode's GPU tests (its kernel vs the float64
# reference at the model shapes and ragged ones, a CUDA graph, the Mamba-2 decode step at batch 64 vs the general
# conv update, cg=True vs eager in bf16 at batch 12; narrow_linear, lt_linear, the Mamba-1 step past batch 4);
# 2. ncu on the batch_decode kernels
# (benchmarks/device/decode64b_ncu.py), beside the tests (it times nothing); each writes a flag file when done.
# 3. benchmarks/device/decode64b_bench.py (no pytest in it: no NaN poisoning) waits for both flags, then times
# the models' b64 decode per step (cg=True) with the kernel list of one eager step (batch_decode's forms on, or
# some off: @off @nolt @nonarrow @plain), in the order of MODELS, skipping what would start past 41 s.
# Usage: benchmarks/device/decode64b.sh OUT_DIR
set -uo pipefail
OUT=${1:-decode64b_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
MODELS=${DECODE64B_MODELS:-mamba-130m,mamba-130m@nonarrow,mamba-1.4b,mamba-1.4b@plain,mamba2-130m,mamba2-130m@off,mamba2-1.3b,mamba-130m@plain}
(timeout -k 2 30 python3 -m pytest -q -p no:cacheprovider -rf -k cuda tests/ops/test_batch_decode.py \
  > "$OUT/pytest.log" 2>&1
 echo "pytest rc=$?" > "$OUT/tests.done") &
(timeout -k 2 25 ncu --clock-control none -k regex:batch_ --launch-count 6 --section SpeedOfLight \
  --section WarpStateStats --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
  python3 benchmarks/device/decode64b_ncu.py > "$OUT/ncu.txt" 2>&1
 echo "ncu rc=$?" > "$OUT/ncu.done") &
timeout -k 2 47 python3 benchmarks/device/decode64b_bench.py "$OUT" --wait "$OUT/tests.done,$OUT/ncu.done" \
  --deadline 41 --models "$MODELS" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
wait
cat "$OUT/tests.done" "$OUT/ncu.done" 2>/dev/null
tail -3 "$OUT/pytest.log" | cut -c1-200
grep -E "^FAILED|Error" "$OUT/pytest.log" | cut -c1-200 | head -6
cut -c1-170 "$OUT/bench.log" | grep -v "^  .* W@xT\|cublaslt" | head -30
grep -E "batch_conv_|Duration|DRAM Throughput|Achieved Occupancy|Warp Cycles Per Issued|Registers Per" \
  "$OUT/ncu.txt" | cut -c1-110 | head -24
