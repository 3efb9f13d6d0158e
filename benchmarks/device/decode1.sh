#!/usr/bin/env bash
# Device round script of decode1 (session 8, round 2; runs after the lead's build, from the repo root,
# <= 50 s): the GPU tests of what changed (conv_state_step drawing its ticket before the PDL wait with
# the settled states, in both row shapes and dtypes, back-to-back calls on other states, graph replays;
# the GEMV's norm statistics from registers in every prologue mode; the models' cg=True generation
# against eager, step against forward), then in ONE separate process (no pytest, so no NaN poisoning)
# the batch-1 decode per token of the four model shapes, one token's kernel timeline of mamba2-130m and
# mamba2-1.3b and mamba-1.4b (benchmarks/device/decode_e2e.py).
# Usage: benchmarks/device/decode1.sh OUT_DIR
set -uo pipefail
OUT=${1:-decode1_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
summary() { echo "$1 rc=$2: $(grep -E "FAILED|^ERROR|passed|failed" "$3" | cut -c1-250 | tail -4 | tr '\n' ' ')"; }
T=tests/ops/test_conv_state_step.py::test_cuda_kernel_equals_separate_ops
timeout 21 python3 -m pytest -v -p no:cacheprovider -rf \
  tests/ops/test_conv_state_step.py::test_cuda_back_to_back_calls_on_other_states \
  "$T[case6-dtype1-0-True]" "$T[case6-dtype1-1-True]" "$T[case2-dtype1-0-True]" "$T[case3-dtype0-0-True]" \
  "$T[case4-dtype1-0-True]" "$T[case1-dtype0-1-True]" "$T[case5-dtype1-0-True]" "$T[case2-dtype0-0-False]" \
  tests/ops/test_conv_state_step.py::test_cuda_graph_replays_equal_eager \
  tests/utils/test_generation.py::test_cuda_graph_decode_equals_eager \
  tests/modules/test_consistency_cuda.py::test_step_matches_forward \
  tests/ops/test_norm_gemv.py::test_streamed_kernel_many_rows_per_warp \
  tests/ops/test_norm_gemv.py::test_vector_and_scalar_prologues_agree \
  tests/ops/test_norm_gemv.py::test_norm_linear_cuda_kernel_equals_separate_ops > "$OUT/pytest.log" 2>&1
summary "decode1 tests" $? "$OUT/pytest.log"
timeout 28 python3 benchmarks/device/decode_e2e.py --out "$OUT" \
  --models mamba2-130m,mamba2-1.3b,mamba-130m,mamba-1.4b --variants "" --reps 2 \
  --profile mamba2-130m,mamba2-1.3b,mamba-1.4b --profile-variants "" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -E "GB/s|decode b1|profile |Error|error" "$OUT/bench.log" | cut -c1-200 | head -30
