#!/usr/bin/env bash
# Device round script of engineer decodebig (session 10; runs after the lead's build, from the repo root, <= 50 s).
# 1. decodebig_bench.py (one process, no pytest): per model the b1 decode per token and the per-layer account of one
#    graph-replayed token (every kernel's dEnd, bytes, % of copy, a middle layer's timeline), the same token with the
#    GEMV's register form everywhere (reg: SSM_GEMV_RING=0; the default puts Mamba-2's in_proj / out_proj and the
#    lm_heads in the ring form), then reg end to end.
# 2. pytest: the decode tests (the GEMV in both forms, conv_state_step, the Mamba-1 steps, cg=True generation,
#    step against forward; the batch decode's passed in round 1b on this code).
# Usage: benchmarks/device/decodebig.sh OUT_DIR
set -uo pipefail
OUT=${1:-decodebig_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
summary() { echo "$1 rc=$2: $(grep -E "FAILED|^ERROR|passed|failed" "$3" | cut -c1-200 | tail -5 | tr '\n' ' ')"; }
timeout -k 2 21 python3 benchmarks/device/decodebig_bench.py "$OUT" --deadline 15 \
  --models mamba2-1.3b,mamba2-130m,mamba-1.4b --variants reg --e2e-variants reg > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
timeout -k 2 25 python3 -m pytest -q -p no:cacheprovider -rf -m cuda tests/utils/test_generation.py \
  tests/ops/test_norm_gemv.py tests/ops/test_conv_state_step.py tests/ops/test_proj_state_step.py \
  tests/modules/test_consistency_cuda.py -k "not consistency_cuda or step_matches" \
  > "$OUT/pytest.log" 2>&1
summary "tests" $? "$OUT/pytest.log"
grep -E "GB/s|decode b|profile |skipped|Error" "$OUT/bench.log" | cut -c1-150 | head -24
