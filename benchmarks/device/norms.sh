#!/usr/bin/env bash
# Device round (norms): the CUDA norm / gated norm / conv gradient tests and the new kernels'
# shapes (-x, one process), then benchmarks/device/norms_bench.py (bench_cuda.py's norm and conv
# rows with each figure's share of the copy bandwidth on kernel time, the eager path A/B, a
# per-kernel breakdown). Usage: benchmarks/device/norms.sh OUT_DIR   (< 50 s)
set -uo pipefail
OUT=${1:-results/norms}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# by priority: the register kernels' shapes, then the gradients through the eager autograd path;
# SIGINT at the limit so that pytest still prints its summary
timeout -s INT -k 2 22 python3 -m pytest -q -x -m cuda -p no:cacheprovider \
  tests/ops/test_norm.py::test_gradients_wide_rows tests/ops/test_gated_norm.py::test_gradients_packed_groups \
  tests/ops/test_norm.py::test_long_rows_many_tokens tests/ops/test_gated_norm.py::test_long_sequence \
  tests/ops/test_norm.py::test_gradients_match_reference tests/ops/test_gated_norm.py::test_gradients_match_reference \
  tests/ops/test_dw_causal_conv.py -k "wide_rows or packed_groups or gradients or long_rows or long_sequence" \
  > "$OUT/pytest.log" 2>&1
rc=$?
progress=$(grep -E '^[.sFE]+( |$)' "$OUT/pytest.log" | tr -cd '.F' | wc -c)
echo "tests rc=$rc (124/2 = time limit; $progress run): $(grep -E "^FAILED|^ERROR|passed|failed" "$OUT/pytest.log" | cut -c1-240 | tail -3 | tr '\n' ' ')"
timeout 23 python3 benchmarks/device/norms_bench.py "$OUT/bench.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
python3 - "$OUT/bench.json" <<'PY' || true
import json, re, sys
d = json.load(open(sys.argv[1]))
copy = d["meta"]["copy_gbs"]
print(f"{d['meta']['device']}: copy {copy:.0f} GB/s")
for r in d["results"]:
    m = re.search(r"kernels alone ([0-9.]+) us", r["note"] or "")
    k = f"kernels {float(m.group(1)):7.1f} us = {100 * r['bytes'] / (float(m.group(1)) * 1e-6) / 1e9 / copy:5.1f}% copy" if m else ""
    print(f"  {r['name']:34s} event {r['ms'] * 1e3:7.1f} us = {100 * r['frac_copy']:5.1f}% copy  {k}")
PY
grep -E "EAGER_DIRECT|^  [a-z]|^    " "$OUT/bench.log" | grep -v "  ref \|GB/s" | head -24
