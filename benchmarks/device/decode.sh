#!/usr/bin/env bash
# Device round script of the decode work (runs after the lead's build, from the repo root, <= 60 s):
# the GPU tests of the decode-step kernels and of decoding through them, then the decode timings
# (state-step kernels, fused conv + step, per-token latency with cg=True, a per-token kernel profile).
# Usage: benchmarks/device/decode.sh OUT_DIR
set -uo pipefail
OUT=${1:-decode_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
timeout 18 python3 -m pytest -x -q -p no:cacheprovider -rf -k cuda \
  tests/ops/test_conv_state_step.py tests/ops/test_proj_state_step.py tests/ops/test_norm_gemv.py tests/ops/test_state_step.py \
  tests/modules/test_consistency_cuda.py::test_step_matches_forward \
  tests/utils/test_generation.py::test_cuda_graph_decode_equals_eager > "$OUT/pytest.log" 2>&1
echo "tests rc=$?: $(grep -E "^FAILED|^ERROR|passed|failed" "$OUT/pytest.log" | cut -c1-250 | tail -6 | tr '\n' ' ')"
timeout 40 python3 benchmarks/bench_decode_cuda.py --out "$OUT/bench_decode_cuda.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -vE "^\s+[0-9.]+ us/token" "$OUT/bench.log" | cut -c1-200 | head -40
