"""Where one Mamba-1 layer's prefill time goes (mamba-130m shape: d_model 768, d_inner 1536,
N 16, dt_rank 48; batch 1, L 2048, float32): in_proj, conv, x_proj, dt_proj, scan, out_proj
timed one by one (median of 3), then mamba_inner_fn as a whole. Prints ms per part and the load.

Usage: python benchmarks/bench_mamba1_layer_parts.py
"""
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ssm import ops  # noqa: E402

torch.manual_seed(0)
D, L, N, R, M = 1536, 2048, 16, 48, 768
u = torch.randn(L, M); Win = torch.randn(2*D, M) * M**-0.5
conv_w = torch.randn(D, 4) * 0.5; conv_b = torch.randn(D)
Wx = torch.randn(R + 2*N, D) * D**-0.5; Wdt = torch.randn(D, R) * R**-0.5; Wout = torch.randn(M, D) * D**-0.5
A = -torch.rand(D, N) - 0.5; Dp = torch.randn(D); db = torch.randn(D) * 0.3 - 2
def t(f, n=3):
    f(); ts = []
    for _ in range(n):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return sorted(ts)[n // 2] * 1e3
with torch.no_grad():
    xz = (Win @ u.t()).view(1, 2*D, L)
    x, z = xz[:, :D], xz[:, D:]
    xc = ops.dw_causal_conv(x, conv_w, conv_b, "silu")
    xt = xc.transpose(1, 2).reshape(L, D)
    x_dbl = F.linear(xt, Wx)
    dt = F.linear(x_dbl[:, :R], Wdt)
    Bm = x_dbl[:, R:R+N].t()[None, None]; Cm = x_dbl[:, R+N:].t()[None, None]
    y = ops.selective_scan(xc, dt.t()[None], A, Bm, Cm, Dp, z, db, True)
    parts = {
      "in_proj": lambda: Win @ u.t(),
      "conv": lambda: ops.dw_causal_conv(x, conv_w, conv_b, "silu"),
      "transpose copy": lambda: xc.transpose(1, 2).reshape(L, D),
      "x_proj": lambda: F.linear(xt, Wx),
      "dt_proj": lambda: F.linear(x_dbl[:, :R], Wdt),
      "scan": lambda: ops.selective_scan(xc, dt.t()[None], A, Bm, Cm, Dp, z, db, True),
      "out_proj": lambda: F.linear(y.transpose(1, 2), Wout),
      "inner_fn total": lambda: ops.mamba_inner_fn(xz, conv_w[:, None], conv_b, Wx, Wdt, Wout, None, A, None, None, Dp, db),
    }
    for k, f in parts.items():
        print(f"{k:16s} {t(f):8.1f} ms", flush=True)
print("load", os.getloadavg())
