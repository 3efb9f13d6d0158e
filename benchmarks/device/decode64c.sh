#!/usr/bin/env bash
# Device round script of the batch-64 decode work (session 9, engineer decode64, branch decode64c; runs after the
# lead's build, from the repo root, <= 50 s). Two processes: 1. pytest: the GPU tests of every file the change can
# reach (batch_decode's kernels, the Mamba-1 / Mamba-2 batch steps, generation cg=True vs eager, the LM's CUDA
# cases); it writes a flag file when done. 2. benchmarks/device/decode64c_bench.py (no pytest in it: no NaN
# poisoning) waits for the flag, then times the models' b64 decode per step (cg=True) with the kernel list of one
# eager step, and the b64 projection shapes on cuBLAS, in the order of MODELS, skipping what would start past 42 s.
# Usage: benchmarks/device/decode64c.sh OUT_DIR
set -uo pipefail
OUT=${1:-decode64c_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
MODELS=${DECODE64C_MODELS:-mamba-130m,mamba2-130m,mamba-1.4b,mamba2-1.3b,gemms}
(timeout -k 2 28 python3 -m pytest -q -p no:cacheprovider -rf -k cuda tests/ops/test_batch_decode.py \
  tests/utils/test_generation.py tests/models/test_lm.py > "$OUT/pytest.log" 2>&1
 echo "pytest rc=$?" > "$OUT/tests.done") &
timeout -k 2 48 python3 benchmarks/device/decode64c_bench.py "$OUT" --wait "$OUT/tests.done" \
  --deadline 42 --models "$MODELS" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
wait
cat "$OUT/tests.done" 2>/dev/null
tail -2 "$OUT/pytest.log" | cut -c1-200
grep -E "^FAILED|^ERROR" "$OUT/pytest.log" | cut -c1-200 | head -8
cut -c1-170 "$OUT/bench.log" | grep -v "Warning\|_warn_once" | head -24
