#!/usr/bin/env bash
# Device round of the dedicated CUDA SSD backward (session 10): the GPU gradient tests first (test_ssd_cuda: kernel
# grid f32/f16/bf16 + variants (dc2 / db2 at N 128 and 100) + state forms + sums + bitwise + gradients at model
# sizes; the test_ssd / test_ssd_split CUDA gradient rows), then the timings in a second process (ssdbwd_time.py:
# kernel sums, eager, host: B8 twice, B1 L8192, N 64 (dc / db a block per slice), split off), ncu of dc2, a summary.
# Usage: benchmarks/device/ssdbwd.sh OUT_DIR (repo root, after the build; ~48 s)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/ssdbwd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
timeout -k 1 20 $PY - "$OUT" > "$OUT/tests.log" 2>&1 <<'PYEOF'
import pytest
runs = [("kernel grid + variants + state forms + sums + bitwise + gradients", ["tests/ops/test_ssd_cuda.py"],
         "kernel_backward or sums_kernel or (bitwise and kernel) or gradients"),
        ("ssd / ssd_split gradient rows", ["tests/ops/test_ssd_split.py", "tests/ops/test_ssd.py"], "gradients and cuda")]
for name, files, expr in runs:
    rc = pytest.main([*files, "-q", "-p", "no:cacheprovider", "-k", expr])
    print(f"TESTS {name}: rc={int(rc)}", flush=True)
PYEOF
echo "tests rc=$?"; grep -E "^TESTS|passed|failed|skipped|error" "$OUT/tests.log" | cut -c1-200
grep -E "^FAILED" "$OUT/tests.log" | head -6 | cut -c1-300
timeout -k 1 15 $PY benchmarks/device/ssdbwd_time.py "$OUT" > "$OUT/time.log" 2> "$OUT/time.err"
echo "time rc=$?"; grep -E "^\{|us  |^-- |H200|H100" "$OUT/time.log" | cut -c1-300; tail -2 "$OUT/time.err" | cut -c1-300
timeout -k 1 9 ncu --clock-control none --target-processes all -k "regex:bwd_dc2_mma" --launch-count 1 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats \
  $PY benchmarks/device/ncu_driver.py ssd > "$OUT/ncu.txt" 2>&1
echo "ncu rc=$?"
grep -E "Duration|Achieved Occupancy|Warp Cycles Per Issued|Compute \(SM\) Throughput" "$OUT/ncu.txt" | cut -c1-120 | head -4
$PY - "$OUT/time.json" <<'PYEOF'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except Exception as e:
    sys.exit(f"no time.json: {e}")
for r in rows:
    top = r["top_us"]
    us = {n: next((v for k, v in top.items() if n in k), 0.0) for n in ("bwd_dc", "bwd_dx_mma", "bwd_db")}
    print(f"{r['case']:12s} {r['form']:8s} kernels {r['kernels_ms']:.3f} eager {r['eager_ms']:.3f} ms  "
          + "  ".join(f"{k} {v:.1f}" for k, v in us.items()))
PYEOF
