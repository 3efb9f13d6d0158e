"""Times the CUDA selective scan at issue 5's bench shape (B8 D4096 L2048 N16 bf16, z, D, dt_bias,
softplus; (B, D, L) rows) and at the Mamba-1 model shapes in mamba_ssm's layout (D 1536 and 4096,
B8 L2048: z a slice of xz (B, 2D, L), B/C row slices of x_dbl^T (B, rank + 2N, L)), with the kernel
forms forced by environment switches (SSM_SCAN_ROWS=1/2: channels per thread of the row forward;
SSM_SCAN_BWD_ILP=0/1: entries per pass of the backward), in one process: forward event median
(3 calls back to back after an L2 flush) and kernel time, fwd+bwd kernels with the backward kernel's
own time; the forms' outputs compared. Also the host time of one forward call (no sync). JSON to --out.

    python3 benchmarks/device/scan_time.py --out scan_time.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import ssm.ops as ops  # noqa: E402
from ssm.ops import _kernels  # noqa: E402
from benchmarks.bench_cuda import time_ms  # noqa: E402
from benchmarks.bench_scan_layouts_cuda import kernels_by_time  # noqa: E402

DEV, BF16 = torch.device("cuda"), torch.bfloat16


def inputs(B, D, L, N, model):
    g = torch.Generator("cuda").manual_seed(1)

    def r(*s):
        return torch.randn(*s, device=DEV, generator=g).to(BF16)
    u, delta = r(B, D, L), r(B, D, L) * 0.5 - 1.0
    if model:  # mamba_ssm's layout
        z = r(B, 2 * D, L)[:, D:]
        rank = D // 16
        x_dbl = r(B, rank + 2 * N, L)
        Bm, Cm = (x_dbl[:, c:c + N].unsqueeze(1) for c in (rank, rank + N))
    else:
        z, Bm, Cm = r(B, D, L), r(B, 1, N, L), r(B, 1, N, L)
    A = -torch.rand(D, N, device=DEV, generator=g) - 0.5
    return [u, delta, A, Bm, Cm, torch.randn(D, device=DEV, generator=g),
            z, torch.randn(D, device=DEV, generator=g) * 0.1]


def set_env(form):
    for k in ("SSM_SCAN_ROWS", "SSM_SCAN_BWD_ILP"):
        os.environ.pop(k, None)
    os.environ.update(form)


def measure(args, B, D, L, do_bwd):
    fwd = lambda: ops.selective_scan(*args[:7], args[7], True)
    fparts = kernels_by_time(fwd, iters=5)
    res = dict(fwd_event_ms=time_ms(fwd, reps=10, inner=3),
               fwd_kernel_ms=sum(t for t, k in fparts if "fwd_rows_kernel" in k or "fwd_block_kernel" in k),
               fwd_kernels=[(round(t, 4), k[:80]) for t, k in fparts[:3]])
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fwd()
    res["fwd_host_us"] = (time.perf_counter() - t0) * 1e6
    torch.cuda.synchronize()
    y = fwd()
    grads = None
    if do_bwd:
        leaves = [t.detach().clone().requires_grad_() for t in args]
        dy = torch.randn(B, D, L, device=DEV, dtype=BF16, generator=torch.Generator("cuda").manual_seed(0))

        def fwd_bwd():
            for t in leaves:
                t.grad = None
            torch.autograd.backward(ops.selective_scan(*leaves[:7], leaves[7], True), dy)
        bparts = kernels_by_time(fwd_bwd, iters=2)
        res.update(fwd_bwd_event_ms=time_ms(fwd_bwd, reps=5), fwd_bwd_kernels_ms=sum(t for t, k in bparts),
                   bwd_kernel_ms=sum(t for t, k in bparts if "pair_bwd_kernel" in k),
                   fwd_bwd_kernels=[(round(t, 4), k[:80]) for t, k in bparts[:4]])
        fwd_bwd()
        grads = [t.grad.clone() for t in leaves]
    return res, y, grads


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="scan_time.json")
    a = ap.parse_args()
    _kernels.POISON_OUTPUTS = False
    out = dict(device=torch.cuda.get_device_name(), rows={})
    cases = [("bench D4096", 4096, False, [{}], True),
             ("model D1536", 1536, True, [{}, {"SSM_SCAN_BWD_ILP": "0"}], True),
             ("model D4096", 4096, True, [{}], True)]
    for label, D, model, forms, do_bwd in cases:
        args = inputs(8, D, 2048, 16, model)
        base = None
        for form in forms:
            set_env(form)
            r, y, grads = measure(args, 8, D, 2048, do_bwd)
            tag = f"{label} {' '.join(f'{k[9:]}={v}' for k, v in form.items()) or 'default'}"
            if base is not None:
                r["y_rel_diff"] = rel(y, base[0])
                if grads:
                    r["grad_rel_diff"] = max(rel(g, h) for g, h in zip(grads, base[1]))
            base = base or (y, grads)
            out["rows"][tag] = r
            print(f"{tag:34s} fwd {r['fwd_kernel_ms']:.3f} ms (event {r['fwd_event_ms']:.3f}, host "
                  f"{r['fwd_host_us']:.0f} us)" + (f"  bwd kernel {r['bwd_kernel_ms']:.3f}  fwd+bwd kernels "
                                                    f"{r['fwd_bwd_kernels_ms']:.3f} (event {r['fwd_bwd_event_ms']:.3f})" if do_bwd else "")
                  + (f"  diff y {r['y_rel_diff']:.1e}" if "y_rel_diff" in r else "")
                  + (f" grads {r['grad_rel_diff']:.1e}" if "grad_rel_diff" in r else ""), flush=True)
            with open(a.out, "w") as f:
                json.dump(out, f, indent=1)
    set_env({})


if __name__ == "__main__":
    main()
