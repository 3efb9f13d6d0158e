#!/usr/bin/env bash
# Device round of the SSD state kernels (ssdstate, session 9): every GPU test file the change can reach first (one
# pytest process: test_ssd_cuda.py whole, the CUDA rows of test_ssd / test_ssd_split / test_ssd_bwd, the Mamba-2
# module / consistency / eager / LM CUDA rows), then one second process (ssdstate_time.py; no NaN poisoning): the
# seed study of round 1's float32 dA failure (new vs session 8's bwd_state / finalize), then kernel sums, eager and
# this engineer's kernels. (Round 1 took the ncu profiles.)
# Usage: benchmarks/device/ssdstate.sh OUT_DIR (repo root, after the build; <= 50 s)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/ssdstate}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
timeout -k 1 21 $PY -m pytest -p no:cacheprovider -rf tests/ops/test_ssd_cuda.py tests/ops/test_ssd.py \
  tests/ops/test_ssd_split.py tests/ops/test_ssd_bwd.py tests/modules/test_consistency_cuda.py \
  tests/modules/test_mamba2.py tests/ops/test_eager_autograd.py tests/ops/test_eager_fast_path.py \
  tests/models/test_lm.py -k cuda > "$OUT/tests.log" 2>&1
echo "tests rc=$? at ${SECONDS}s"
grep -E "passed|failed" "$OUT/tests.log" | tail -1 | cut -c1-200
grep -E "^FAILED|^ERROR" "$OUT/tests.log" | head -8 | cut -c1-300
timeout -k 1 27 $PY benchmarks/device/ssdstate_time.py "$OUT" > "$OUT/time.log" 2> "$OUT/time.err"
echo "time rc=$? at ${SECONDS}s"; grep -E "^\{|^-- |H200|H100|failed" "$OUT/time.log" | cut -c1-170; tail -2 "$OUT/time.err" | cut -c1-300
