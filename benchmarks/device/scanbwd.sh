#!/usr/bin/env bash
# Device round for the CUDA selective-scan backward (issue 5, engineer scanbwd): the CUDA scan and
# mamba_inner tests with the default kernel and, beside them, the gradient tests with four warps per
# 32 channels (SSM_SCAN_BWD_WARPS=4); then benchmarks/device/scanbwd_bench.py (fwd+bwd and bwd-alone
# times at the bench and mamba-130m shapes for both kernels; a host/device timeline of one call).
# Runs from the repo root after the lead's build; logs and JSON into $1; at most ~50 s.
OUT=${1:-scanbwd_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
left() { echo $((${1} - SECONDS)); }
# the L = 16384 gradient test (a 16384-step float64 reference loop) does not fit the time limit;
# no hypothesis plugin (its import at the summary cost round 1 its summary line)
PT="-m pytest -q -x -m cuda -p no:cacheprovider -p no:hypothesispytest -rf"
SSM_SCAN_BWD_WARPS=4 timeout -k 2 -s INT 27 $PY $PT -k "gradients and not long_sequence_cuda" \
  tests/ops/test_selective_scan.py tests/ops/test_mamba_inner.py > "$OUT/pytest_four.log" 2>&1 &
FOUR=$!
timeout -k 2 -s INT 27 $PY $PT -k "not long_sequence_cuda" \
  tests/ops/test_selective_scan.py tests/ops/test_mamba_inner.py > "$OUT/pytest.log" 2>&1
echo "pytest rc=$? at ${SECONDS}s: $(grep -E "passed|failed|error" "$OUT/pytest.log" | tail -1)"
grep -E "^(FAILED|ERROR)|Error:|error |assert" "$OUT/pytest.log" | head -6 | cut -c1-300
wait $FOUR
echo "pytest (4 warps) rc=$? at ${SECONDS}s: $(grep -E "passed|failed|error" "$OUT/pytest_four.log" | tail -1)"
grep -E "^(FAILED|ERROR)|Error:|error |assert" "$OUT/pytest_four.log" | head -6 | cut -c1-300
T=$(left 50); [ "$T" -gt 22 ] && T=22
timeout -k 1 $T $PY benchmarks/device/scanbwd_bench.py --out "$OUT/scanbwd.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$? at ${SECONDS}s"
grep -vE "Warning|warn|^  launch.*(reduce_kernel|elementwise_kernel<8)" "$OUT/bench.log" | cut -c1-150 | head -40
