#!/usr/bin/env bash
# Device round script of engineer decodebig (session 10; runs after the lead's build, from the repo root, <= 50 s).
# 1. decodebig_bench.py (one process, no pytest): Mamba-1's b64 decode with conv_xproj on / off (mamba-130m), then
#    per large model the b1 decode per token and the per-layer account of one graph-replayed token (every kernel's
#    dEnd, bytes, % of copy, a middle layer's timeline), the same token under the GEMV's ring form (SSM_GEMV_RING).
# 2. pytest: the GEMV's CUDA tests (the ring form bitwise against the register form), conv_xproj's tests,
#    cg=True generation; then the GEMV's prologue / conv-epilogue tests and generation again with the ring on.
# Usage: benchmarks/device/decodebig.sh OUT_DIR
set -uo pipefail
OUT=${1:-decodebig_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
summary() { echo "$1 rc=$2: $(grep -E "FAILED|^ERROR|passed|failed" "$3" | cut -c1-200 | tail -5 | tr '\n' ' ')"; }
timeout -k 2 25 python3 benchmarks/device/decodebig_bench.py "$OUT" --deadline 18 \
  --b64 mamba-130m@xproj,mamba-130m@noxproj --models mamba2-1.3b,mamba-1.4b --variants ring3_1,ring3 \
  --e2e-variants ring3_1 > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
timeout -k 2 14 python3 -m pytest -q -p no:cacheprovider -rf -m cuda tests/ops/test_norm_gemv.py \
  tests/ops/test_batch_decode.py tests/utils/test_generation.py -k "norm_gemv or xproj or generation" \
  > "$OUT/pytest.log" 2>&1
summary "tests" $? "$OUT/pytest.log"
SSM_GEMV_RING=3:1 timeout -k 2 8 python3 -m pytest -q -p no:cacheprovider -rf -m cuda tests/ops/test_norm_gemv.py \
  -k "conv or prologue or equals or prenorm" tests/utils/test_generation.py > "$OUT/pytest_ring.log" 2>&1
summary "tests ring 3:1" $? "$OUT/pytest_ring.log"
grep -E "GB/s|decode b|profile |layer:|skipped|Error" "$OUT/bench.log" | cut -c1-150 | head -24
