#!/usr/bin/env bash
# Device round for convcl (issues 5, 6: channels-last causal conv in the fused Mamba-2 path): the
# CUDA tests of the conv (channels-last and general), the fused split path and the Mamba-2 module
# consistency, then conv fwd / fwd+bwd channels-last vs copy + conv at the mamba2-130m and 1.3b
# xBC shapes and one Mamba2 layer with the switch on and off.
# Usage: convcl.sh OUT_DIR (repo root, after the build; <= 70 s).
set -uo pipefail
OUT=${1:-/tmp/convcl}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
summary() {  # counts of a verbose pytest log
  echo "$(grep -c " PASSED" "$1") passed, $(grep -c " FAILED" "$1") failed, $(grep -c " SKIPPED" "$1") skipped"
}
t() {  # name, seconds, pytest args...
  local name=$1 lim=$2; shift 2
  timeout "$lim" $PY -m pytest -x -v -p no:cacheprovider "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$?: $(summary "$OUT/$name.log")"
  grep -E "^FAILED|^E  " "$OUT/$name.log" | head -4 | cut -c1-220
}
t conv_cl 16 tests/ops/test_dw_causal_conv_channels_last.py -k "cuda"
t conv 8 tests/ops/test_dw_causal_conv.py -k "cuda"
t split 10 tests/ops/test_ssd_split.py -k "cuda and not compile"
t consistency 8 tests/modules/test_consistency_cuda.py -k "mamba2 or Mamba2 or ssd"
timeout 22 $PY benchmarks/device/convcl_time.py "$OUT/time.json" > "$OUT/time.log" 2>&1
echo "timing rc=$?"; grep -vE "Warning|warn" "$OUT/time.log" | cut -c1-160 | tail -16
