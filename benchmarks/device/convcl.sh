#!/usr/bin/env bash
# Device round for convcl (issues 5, 6: channels-last causal conv in the fused Mamba-2 path): the
# CUDA tests of the channels-last conv, the fused split path and the Mamba-2 module
# consistency, then conv fwd / fwd+bwd channels-last vs copy + conv at the mamba2-130m and 1.3b
# xBC shapes and one Mamba2 layer with the layout switch on and off (details in time.log/json).
# Usage: convcl.sh OUT_DIR (repo root, after the build; <= 70 s).
set -uo pipefail
OUT=${1:-/tmp/convcl}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
TESTS=""
t() {  # name, seconds, pytest args...
  local name=$1 lim=$2; shift 2
  timeout "$lim" $PY -m pytest -x -v -p no:cacheprovider "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  TESTS+="$name rc=$rc $(grep -c " PASSED" "$OUT/$name.log")p/$(grep -c " FAILED" "$OUT/$name.log")f; "
  grep -E "^FAILED|^E  " "$OUT/$name.log" | head -3 | cut -c1-200
}
t conv_cl 15 tests/ops/test_dw_causal_conv_channels_last.py -k "cuda"
t split 15 tests/ops/test_ssd_split.py -k "cuda and not compile"
t consistency 11 tests/modules/test_consistency_cuda.py -k "mamba2"
timeout 20 $PY benchmarks/device/convcl_time.py "$OUT/time.json" > "$OUT/time.log" 2> "$OUT/time.err"
rc=$?; echo "timing rc=$rc"; cut -c1-200 "$OUT/time.log"
[[ $rc != 0 ]] && grep -vE "Warn|warn" "$OUT/time.err" | tail -2 | cut -c1-200
echo "tests: $TESTS"
