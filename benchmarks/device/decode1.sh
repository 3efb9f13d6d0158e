#!/usr/bin/env bash
# Device round script of decode1 (session 7; runs after the lead's build, from the repo root, <= 50 s):
# the GPU tests of what changed (the small-batch Mamba-1 step kernel m1_decode_step; conv_state_step with the
# states read before the PDL wait, both row shapes; Mamba-1 dt_proj through the small-batch GEMV past rank 64
# without it; the model's cg=True generation against eager,
# step against forward), then in ONE separate process (no pytest, so no NaN poisoning) the batch-1 decode
# per token of the four model shapes, a per-kernel timeline of one 130m token, the variants
# (benchmarks/device/decode_e2e.py).
# Usage: benchmarks/device/decode1.sh OUT_DIR
set -uo pipefail
OUT=${1:-decode1_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
summary() { echo "$1 rc=$2: $(grep -E "FAILED|^ERROR|passed|failed" "$3" | cut -c1-250 | tail -4 | tr '\n' ' ')"; }
timeout 21 python3 -m pytest -v -p no:cacheprovider -rf \
  tests/ops/test_proj_state_step.py::test_cuda_small_batch_large_rank_runs_dt_proj_through_the_gemv \
  tests/ops/test_norm_gemv.py::test_streamed_kernel_many_rows_per_warp \
  tests/ops/test_conv_state_step.py::test_cuda_graph_replays_equal_eager \
  tests/utils/test_generation.py::test_cuda_graph_decode_equals_eager \
  tests/models/test_lm.py::test_decode_with_final_norm_folded_into_lm_head \
  tests/modules/test_consistency_cuda.py::test_step_matches_forward_with_dt_proj_past_the_fold \
  tests/modules/test_consistency_cuda.py::test_step_matches_forward \
  tests/ops/test_proj_state_step.py::test_cuda_small_batch_step_kernel_equals_the_other_path_over_steps \
  tests/ops/test_norm_gemv.py::test_norm_linear_conv_equals_separate_ops \
  tests/ops/test_conv_state_step.py::test_cuda_kernel_equals_separate_ops \
  tests/ops/test_proj_state_step.py::test_cuda_small_batch_step_kernel_matches_reference > "$OUT/pytest.log" 2>&1
summary "decode1 tests" $? "$OUT/pytest.log"
timeout 27 python3 benchmarks/device/decode_e2e.py --out "$OUT" \
  --models mamba2-130m,mamba-130m,mamba2-1.3b,mamba-1.4b > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -E "GB/s|decode b1|profile|     |Error|error" "$OUT/bench.log" | cut -c1-220 | head -50
