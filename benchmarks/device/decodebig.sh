#!/usr/bin/env bash
# Device round script of engineer decodebig (session 10; runs after the lead's build, from the repo root, <= 50 s).
# 1. decodebig_bench.py (one process, no pytest): per model the b1 decode per token and the per-layer account of one
#    graph-replayed token (every kernel's dEnd, bytes, % of copy, a middle layer's timeline), the same token under
#    the variants: reg (the GEMV's register form everywhere, SSM_GEMV_RING=0), m1_late (m1_decode_step releases
#    out_proj after its wait, SSM_M1_RELEASE_EARLY=0).
# 2. pytest: the GEMV's CUDA tests (ring and register forms bitwise), m1_decode_step's, the batch decode's (conv_xproj
#    removed), cg=True generation.
# Usage: benchmarks/device/decodebig.sh OUT_DIR
set -uo pipefail
OUT=${1:-decodebig_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
summary() { echo "$1 rc=$2: $(grep -E "FAILED|^ERROR|passed|failed" "$3" | cut -c1-200 | tail -5 | tr '\n' ' ')"; }
timeout -k 2 21 python3 benchmarks/device/decodebig_bench.py "$OUT" --deadline 14 \
  --models mamba-1.4b,mamba2-1.3b,mamba2-130m --variants m1_late,reg --e2e-variants "" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
timeout -k 2 26 python3 -m pytest -q -p no:cacheprovider -rf -m cuda tests/utils/test_generation.py \
  tests/ops/test_proj_state_step.py tests/ops/test_batch_decode.py tests/ops/test_norm_gemv.py \
  -k "generation or small_batch or mamba1_batch or narrow or norm_gemv" > "$OUT/pytest.log" 2>&1
summary "tests" $? "$OUT/pytest.log"
grep -E "GB/s|decode b|profile |layer|skipped|Error" "$OUT/bench.log" | cut -c1-150 | head -24
