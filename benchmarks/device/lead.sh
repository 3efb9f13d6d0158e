#!/usr/bin/env bash
# Lead's round script: gated-norm CUDA tests, then its forward timed at Mamba-2 shapes; logs into $1.
OUT=${1:-lead_out}; mkdir -p "$OUT"
timeout -k 3 25 python3 -m pytest tests/ops/test_gated_norm.py -q -m cuda -p no:cacheprovider -x > "$OUT/pytest.log" 2>&1
tail -2 "$OUT/pytest.log"
timeout -k 3 20 python3 - > "$OUT/time.log" 2>&1 <<'PY'
import sys; sys.path.insert(0, "benchmarks")
import torch
from bench_cuda import time_ms, copy_bandwidth
from ssm import ops
copy = copy_bandwidth()
for rows, cols in [(16384, 4096), (16384, 1536)]:
    x, z = (torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    w = torch.randn(cols, device="cuda", dtype=torch.bfloat16)
    ms = time_ms(lambda: ops.gated_rms_norm(x, w, None, z, eps=1e-5, group_size=cols, norm_before_gate=False))
    print(f"gated norm fwd {rows}x{cols} group {cols}: {ms * 1e3:.1f} us, {3 * x.numel() * 2 / ms / 1e6 / copy:.0%} of copy ({copy:.0f} GB/s)")
PY
cat "$OUT/time.log"
