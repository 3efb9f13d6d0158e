#!/usr/bin/env bash
# Device round script of the decode work (session 6; runs after the lead's build, from the repo root,
# <= 50 s): the GPU tests of the small-batch GEMV (its vector and element-wise prologues), the model's
# cg=True generation against eager, step against forward, the folded final norm, then in ONE
# separate process (no pytest, so no NaN poisoning) the batch-1 decode per token of the four model
# shapes with each variant and a per-kernel timeline of one token (benchmarks/device/decode_e2e.py).
# Usage: benchmarks/device/decode.sh OUT_DIR
set -uo pipefail
OUT=${1:-decode_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
summary() { echo "$1 rc=$2: $(grep -E "^FAILED|^ERROR|passed|failed" "$3" | cut -c1-250 | tail -4 | tr '\n' ' ')"; }
timeout 18 python3 -m pytest -q -p no:cacheprovider -rf -k "cuda or inference_mode" \
  tests/ops/test_norm_gemv.py::test_vector_and_scalar_prologues_agree \
  tests/ops/test_norm_gemv.py \
  tests/models/test_lm.py::test_decode_with_final_norm_folded_into_lm_head \
  tests/models/test_lm.py::test_model_built_under_inference_mode_decodes \
  tests/utils/test_generation.py::test_cuda_graph_decode_equals_eager \
  tests/modules/test_consistency_cuda.py::test_step_matches_forward > "$OUT/pytest.log" 2>&1
summary "decode tests" $? "$OUT/pytest.log"
timeout 30 python3 benchmarks/device/decode_e2e.py --out "$OUT" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -E "GB/s|decode b1|profile|     |Error|error" "$OUT/bench.log" | cut -c1-220 | head -60
