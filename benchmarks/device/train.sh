#!/usr/bin/env bash
# Device round of engineer train (session 8; issue 6's end-to-end prefill and training rows). From the repo
# root after the lead's build, <= 50 s; logs and JSON into $1:
# 1. the GPU tests of test_mamba_inner (fused Mamba-1 path; this session's planned-scan and autocast tests
#    first; stopped at 14 s; round 1 ran the scan layout tests too);
# 2. ONE python process without NaN poisoning (benchmarks/device/train_round.py): per model the eager times of every
#    form first (prefill, 130m training steps, host-path variants), then kernel sums, gaps and for mamba-130m one
#    profiled training step (kernel table by category, aten ops with shapes, cProfile), then the default once more.
OUT=${1:-train_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
timeout -k 2 -s INT 14 $PY -m pytest -q -p no:cacheprovider -rf -k "cuda and not compile" \
  tests/ops/test_ssd_split.py::test_autocast_runs_in_its_dtype tests/ops/test_mamba_inner.py > "$OUT/pytest.log" 2>&1
echo "tests rc=$? at ${SECONDS}s: $(grep -E "passed|failed|error" "$OUT/pytest.log" | grep -vE "^(FAILED|ERROR)" | tail -1 | cut -c1-200)"
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -6 | cut -c1-220
T=$((48 - SECONDS)); [ "$T" -gt 32 ] && T=32
timeout -k 2 $T $PY benchmarks/device/train_round.py "$OUT" --budget $((T - 14)) > "$OUT/round.log" 2> "$OUT/round.err"
echo "round rc=$? at ${SECONDS}s"
cut -c1-200 "$OUT/round.log"
grep -vE "Warn|warn" "$OUT/round.err" | tail -3 | cut -c1-200
