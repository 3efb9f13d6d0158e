#!/usr/bin/env bash
# Device round (norms): the CUDA norm / gated norm / conv tests (-x), then the norm rows and the
# conv rows of bench_cuda.py, with each figure's share of the copy bandwidth on kernel time.
# Usage: benchmarks/device/norms.sh OUT_DIR   (runs from the repo root after the build; < 50 s)
set -uo pipefail
OUT=${1:-results/norms}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
for part in "norm:13:tests/ops/test_norm.py tests/ops/test_gated_norm.py" "conv:9:tests/ops/test_dw_causal_conv.py"; do
  IFS=: read -r name limit files <<< "$part"
  timeout "$limit" python3 -m pytest $files -q -x -m cuda -p no:cacheprovider > "$OUT/pytest_$name.log" 2>&1
  rc=$?
  progress=$(grep -E '^[.sFE]+( |$)' "$OUT/pytest_$name.log" | tr -cd '.F' | wc -c)
  echo "$name tests rc=$rc (124 = time limit; $progress run): $(grep -E "^FAILED|^ERROR|passed|failed" "$OUT/pytest_$name.log" | cut -c1-240 | tail -3 | tr '\n' ' ')"
done
timeout 7 python3 benchmarks/device/norms_kernels.py > "$OUT/kernels.log" 2>&1
echo "kernels rc=$?"; head -20 "$OUT/kernels.log"
timeout 19 python3 benchmarks/bench_cuda.py --only norm,conv --out "$OUT/bench.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
python3 - "$OUT/bench.json" <<'PY' || tail -14 "$OUT/bench.log"
import json, re, sys
d = json.load(open(sys.argv[1]))
copy = d["meta"]["copy_gbs"]
print(f"{d['meta']['device']}: copy {copy:.0f} GB/s")
for r in d["results"]:
    m = re.search(r"kernels alone ([0-9.]+) us", r["note"] or "")
    k = f"kernels {float(m.group(1)):7.1f} us = {100 * r['bytes'] / (float(m.group(1)) * 1e-6) / 1e9 / copy:5.1f}% copy" if m else ""
    print(f"  {r['name']:34s} event {r['ms'] * 1e3:7.1f} us = {100 * r['frac_copy']:5.1f}% copy  {k}")
PY
