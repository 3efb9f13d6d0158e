#!/usr/bin/env bash
# Device round of engineer train (session 9; issue 6's end-to-end prefill and training rows). From the repo
# root after the lead's build, <= 50 s; logs and JSON into $1:
# 1. the GPU tests of the files this branch changes: test_mamba_inner (fused Mamba-1 path; this session's
#    small-parameter / A_is_log / in_proj tests first), test_consistency_cuda (the modules on CUDA: gradients
#    against the CPU, step vs forward, chunked prefill, varlen), test_norm's autograd cases (the weights cast
#    inside the op); stopped at 20 s;
# 2. ONE python process without NaN poisoning (benchmarks/device/train_round.py): per model the eager times of
#    every form first (prefill, 130m training steps, session 8's host path, the training forward's host time),
#    then kernel sums and per-kernel tables (kernels_<model>_<work>.txt) and the 130m step's idle gaps.
OUT=${1:-train_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
timeout -k 2 -s INT 20 $PY -m pytest -q -p no:cacheprovider -rf \
  -k "cuda and not compile and (mamba_inner or consistency or gradients or half_weights)" \
  tests/ops/test_mamba_inner.py::test_A_is_log_matches_A tests/ops/test_mamba_inner.py::test_small_parameters_without_cast_nodes \
  tests/ops/test_mamba_inner.py::test_derived_A_follows_updates tests/ops/test_norm.py::test_half_weights_without_cast_nodes \
  tests/ops/test_mamba_inner.py tests/modules/test_consistency_cuda.py tests/ops/test_norm.py > "$OUT/pytest.log" 2>&1
echo "tests rc=$? at ${SECONDS}s: $(grep -E "passed|failed|error" "$OUT/pytest.log" | grep -vE "^(FAILED|ERROR)" | tail -1 | cut -c1-200)"
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -6 | cut -c1-220
T=$((48 - SECONDS)); [ "$T" -gt 30 ] && T=30
timeout -k 2 $T $PY benchmarks/device/train_round.py "$OUT" --budget $((T - 10)) > "$OUT/round.log" 2> "$OUT/round.err"
echo "round rc=$? at ${SECONDS}s"
cut -c1-200 "$OUT/round.log"
grep -vE "Warn|warn" "$OUT/round.err" | tail -3 | cut -c1-200
