#!/usr/bin/env bash
# Device round script of decode1 (session 9, round 2; runs after the lead's build, from the repo root,
# <= 50 s): every CUDA test of the files the change can affect (the GEMV's norm statistics in one summation
# order for every prologue form, the GEMV pulling its register units into L2 as a variant; conv_state_step with
# narrow rows only, proj_state_step without SSM_M1_DECODE_STEP, the models' cg=True generation against eager,
# step against forward), then in ONE separate process (no pytest, so no NaN poisoning) the batch-1 decode per
# token of the four model shapes, one token's kernel timeline of each (the large ones also with the GEMV pulling
# its register units into L2 first, mamba-130m also with the conv update in its own kernel), then those
# variants' end-to-end figures (decode_e2e.py).
# Usage: benchmarks/device/decode1.sh OUT_DIR
set -uo pipefail
OUT=${1:-decode1_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
summary() { echo "$1 rc=$2: $(grep -E "FAILED|^ERROR|passed|failed" "$3" | cut -c1-250 | tail -6 | tr '\n' ' ')"; }
timeout 24 python3 -m pytest -q -p no:cacheprovider -rf -m cuda \
  tests/ops/test_norm_gemv.py tests/ops/test_conv_state_step.py tests/ops/test_proj_state_step.py \
  tests/utils/test_generation.py tests/modules/test_consistency_cuda.py::test_step_matches_forward \
  tests/modules/test_consistency_cuda.py::test_step_matches_forward_with_dt_proj_past_the_fold \
  > "$OUT/pytest.log" 2>&1
summary "decode1 tests" $? "$OUT/pytest.log"
timeout 22 python3 benchmarks/device/decode_e2e.py --out "$OUT" \
  --models mamba2-130m,mamba2-1.3b,mamba-130m,mamba-1.4b --variants prefetch_own,m1_conv_kernel --reps 2 \
  --profile mamba2-130m,mamba2-1.3b,mamba-130m,mamba-1.4b --profile-variants prefetch_own,m1_conv_kernel@mamba-130m \
  > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -E "GB/s|decode b1|profile |Error|error" "$OUT/bench.log" | cut -c1-200 | head -30
