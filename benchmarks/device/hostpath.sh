#!/usr/bin/env bash
# Device round of engineer hostpath (session 10; issue 6: the 130m training step's and prefill's host time). From the
# repo root after the lead's build, <= 50 s; logs and JSON into $1:
# 1. the GPU tests of what this branch changes: test_ssd_split (the Mamba-2 fused op: this session's small-parameter /
#    A_is_log / in_proj tests first), test_consistency_cuda (the modules on CUDA: gradients against the CPU, step vs
#    forward, chunked prefill, varlen), test_norm's planned-autograd / gradient cases, test_mamba_inner's CUDA cases;
#    stopped at 17 s;
# 2. ONE python process (benchmarks/device/hostpath_round.py): eager train / prefill rows of this branch and main's host
#    path (A/B, same process), a host-bound probe (host us a layer, glue functions), one profiled step per model.
OUT=${1:-hostpath_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
timeout -k 2 -s INT 17 $PY -m pytest -q -p no:cacheprovider -rf -m cuda -k "not compile" \
  tests/ops/test_ssd_split.py::test_A_is_log_and_bf16_parameters_match_cast_ones \
  tests/ops/test_ssd_split.py::test_in_proj_weight_matches_linear_outside \
  tests/ops/test_ssd_split.py::test_small_parameters_without_cast_nodes tests/ops/test_ssd_split.py::test_derived_A_follows_updates \
  tests/ops/test_norm.py::test_planned_autograd_call_equals_general_path tests/ops/test_ssd_split.py \
  tests/modules/test_consistency_cuda.py tests/ops/test_norm.py::test_gradients_match_reference \
  tests/ops/test_norm.py::test_half_weights_without_cast_nodes tests/ops/test_mamba_inner.py \
  > "$OUT/pytest.log" 2>&1
echo "tests rc=$? at ${SECONDS}s: $(grep -E "passed|failed|error" "$OUT/pytest.log" | grep -vE "^(FAILED|ERROR)" | tail -1 | cut -c1-200)"
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -6 | cut -c1-220
T=$((48 - SECONDS)); [ "$T" -gt 31 ] && T=31
timeout -k 2 $T $PY benchmarks/device/hostpath_round.py "$OUT" --budget $((T - 8)) > "$OUT/round.log" 2> "$OUT/round.err"
echo "round rc=$? at ${SECONDS}s"
grep -vE "^  [a-z_]+\.[A-Za-z_]+ +calls" "$OUT/round.log" | cut -c1-200 | tail -14
grep -vE "Warn|warn" "$OUT/round.err" | tail -3 | cut -c1-200
