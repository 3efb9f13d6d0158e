"""Times the CUDA selective scan at issue 5's bench shape (B8 D4096 L2048 N16 bf16, z, D, dt_bias,
softplus; (B, D, L) inputs) and at the mamba-130m layer shape (D 1536, delta and z channels-last as
the projections give them), forward and forward+backward, as event medians and as the profiler's
kernel sum; then one fused Mamba-1 layer (mamba_inner_fn) at the model shape with its kernels by
device time (layout copies show there). Prints a table; writes JSON to --out.

    python3 benchmarks/bench_scan_layouts_cuda.py --out scan.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import ssm.ops as ops  # noqa: E402
from benchmarks.bench_cuda import kernel_ms, time_ms  # noqa: E402

DEV, BF16 = torch.device("cuda"), torch.bfloat16
ROWS = []


def scan_inputs(B, D, L, N, layout):
    def rows():
        if layout == "channels_last":  # (B, L, D) transposed, as F.linear outputs
            return torch.randn(B, L, D, device=DEV, dtype=BF16).transpose(1, 2)
        return torch.randn(B, D, L, device=DEV, dtype=BF16)
    u = torch.randn(B, D, L, device=DEV, dtype=BF16)  # the conv output: L contiguous in both cases
    delta, z = rows() * 0.5 - 1.0, rows()
    if layout == "channels_last":
        delta = delta.transpose(1, 2).contiguous().transpose(1, 2)
        x_dbl = torch.randn(B, L, 48 + 2 * N, device=DEV, dtype=BF16)
        Bm, Cm = (x_dbl[..., c:c + N].transpose(1, 2).unsqueeze(1) for c in (48, 48 + N))
    else:
        Bm, Cm = (torch.randn(B, 1, N, L, device=DEV, dtype=BF16) for _ in range(2))
    A = -torch.rand(D, N, device=DEV) - 0.5
    return [u, delta, A, Bm, Cm, torch.randn(D, device=DEV), z, torch.randn(D, device=DEV) * 0.1]


def kernels_by_time(fn, iters=3):
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = [(e.self_device_time_total / iters / 1e3, e.key) for e in prof.key_averages() if e.self_device_time_total]
    return sorted(rows, reverse=True)


def record(name, ms, kms, parts):
    ROWS.append(dict(name=name, event_ms=ms, kernel_ms=kms, kernels=parts[:8]))
    print(f"{name:44s} event {ms:8.3f} ms  kernels {kms:8.3f} ms", flush=True)
    for t, k in parts[:6]:
        print(f"      {t:8.3f} ms  {k[:100]}", flush=True)


def bench_scan(label, B, D, L, N, layout):
    args = scan_inputs(B, D, L, N, layout)
    fwd = lambda: ops.selective_scan(*args[:7], args[7], True)
    record(f"scan fwd {label}", time_ms(fwd, reps=10), kernel_ms(fwd), kernels_by_time(fwd))
    leaves = [t.detach().clone().requires_grad_() for t in args]
    dy = torch.randn(B, D, L, device=DEV, dtype=BF16)

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        torch.autograd.backward(ops.selective_scan(*leaves[:7], leaves[7], True), dy)
    record(f"scan fwd+bwd {label}", time_ms(fwd_bwd, reps=5), kernel_ms(fwd_bwd, iters=2),
           kernels_by_time(fwd_bwd, iters=2))


def bench_layer(B=8, L=2048, d_model=768, N=16, rank=48):
    D = 2 * d_model
    xz = torch.randn(2 * D, B, L, device=DEV, dtype=BF16).permute(1, 0, 2)  # as Mamba1._forward makes it
    p = dict(conv1d_weight=torch.randn(D, 1, 4, device=DEV) * 0.5, conv1d_bias=torch.randn(D, device=DEV),
             x_proj_weight=torch.randn(rank + 2 * N, D, device=DEV, dtype=BF16) * D ** -0.5,
             delta_proj_weight=torch.randn(D, rank, device=DEV, dtype=BF16) * rank ** -0.5,
             out_proj_weight=torch.randn(d_model, D, device=DEV, dtype=BF16) * D ** -0.5, out_proj_bias=None,
             A=-torch.rand(D, N, device=DEV) - 0.5, D=torch.randn(D, device=DEV),
             delta_bias=torch.randn(D, device=DEV) * 0.1)
    fwd = lambda: ops.mamba_inner_fn(xz, **p)
    with torch.no_grad():
        record("mamba_inner fwd (prefill) D1536", time_ms(fwd, reps=10), kernel_ms(fwd), kernels_by_time(fwd))
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in p.items()}
    xzg = xz.detach().clone().requires_grad_()
    dout = torch.randn(B, L, d_model, device=DEV, dtype=BF16)

    def fwd_bwd():
        for v in [xzg, *leaves.values()]:
            if v is not None:
                v.grad = None
        torch.autograd.backward(ops.mamba_inner_fn(xzg, **leaves), dout)
    record("mamba_inner fwd+bwd D1536", time_ms(fwd_bwd, reps=5), kernel_ms(fwd_bwd, iters=2),
           kernels_by_time(fwd_bwd, iters=2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="scan_layouts.json")
    ap.add_argument("--only", default="bench,model,layer")
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), flush=True)
    if "bench" in a.only:
        bench_scan("B8 D4096 L2048 N16 (B,D,L)", 8, 4096, 2048, 16, "rows")
    if "model" in a.only:
        bench_scan("B8 D1536 L2048 N16 channels-last", 8, 1536, 2048, 16, "channels_last")
    if "layer" in a.only:
        bench_layer()
    with open(a.out, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), rows=ROWS), f, indent=1)


if __name__ == "__main__":
    main()
