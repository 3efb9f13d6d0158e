#!/usr/bin/env bash
# Device round script of the decode work (runs after the lead's build, from the repo root, <= 70 s):
# the GPU tests of the state step (lean and general kernels), then of the conv, the fused decode kernels
# and generation (two runs, so that a failure in one op leaves the other's tests running), then issue 5's
# three small-kernel timings (benchmarks/device/decode_bench.py).
# Usage: benchmarks/device/decode.sh OUT_DIR
set -uo pipefail
OUT=${1:-decode_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
summary() { echo "$1 rc=$2: $(grep -E "^FAILED|^ERROR|passed|failed" "$3" | cut -c1-250 | tail -4 | tr '\n' ' ')"; }
timeout 19 python3 -m pytest -x -q -p no:cacheprovider -rf -k cuda \
  tests/ops/test_state_step.py tests/ops/test_proj_state_step.py > "$OUT/pytest_step.log" 2>&1
summary "step tests" $? "$OUT/pytest_step.log"
timeout 20 python3 -m pytest -x -q -p no:cacheprovider -rf -k cuda \
  tests/ops/test_eager_fast_path.py tests/ops/test_dw_causal_conv.py tests/ops/test_conv_state_step.py tests/ops/test_norm_gemv.py \
  tests/modules/test_consistency_cuda.py::test_step_matches_forward \
  tests/utils/test_generation.py::test_cuda_graph_decode_equals_eager > "$OUT/pytest_conv.log" 2>&1
summary "conv+fused tests" $? "$OUT/pytest_conv.log"
timeout 27 python3 benchmarks/device/decode_bench.py --out "$OUT" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
cut -c1-220 "$OUT/bench.log" | head -40
