"""Kernel times of the CUDA selective-scan forward (N <= 16) and of the backward's checkpoint
pre-pass (profiler device time per call) at issue 5's bench shape (B8 D4096 L2048 N16 bf16, z, D,
dt_bias, softplus), with the row kernel (SSM_SCAN_ROWS=1) and with the
block kernel (=0) in the same process, their outputs compared; optionally the mamba-130m channels-last shape (D 1536). JSON to --out.

    python3 benchmarks/device/scanfwd_time.py --out scanfwd.json [--model]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import ssm.ops as ops  # noqa: E402
from benchmarks.bench_cuda import time_ms  # noqa: E402
from benchmarks.bench_scan_layouts_cuda import kernels_by_time, scan_inputs  # noqa: E402

PREPASS = re.compile(r"fwd_block_kernel<.*false, true>|fwd_rows_kernel<[^,]*, (0|false), (1|true)")
FWD = re.compile(r"fwd_block_kernel<.*true, (false|true)>|fwd_rows_kernel<[^,]*, (1|true), ")


def shape_times(args, B, D, L):
    fwd = lambda: ops.selective_scan(*args[:7], args[7], True)
    fparts = kernels_by_time(fwd, iters=5)
    leaves = [t.detach().clone().requires_grad_() for t in args]
    dy = torch.randn(B, D, L, device="cuda", dtype=torch.bfloat16, generator=torch.Generator("cuda").manual_seed(0))

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        torch.autograd.backward(ops.selective_scan(*leaves[:7], leaves[7], True), dy)
    bparts = kernels_by_time(fwd_bwd, iters=2)
    fwd_bwd()
    return dict(fwd_kernel_ms=sum(t for t, k in fparts if FWD.search(k)),
                fwd_event_ms=time_ms(fwd, reps=10, inner=3),
                prepass_ms=sum(t for t, k in bparts if PREPASS.search(k)),
                fwd_bwd_kernels_ms=sum(t for t, k in bparts),
                kernels=[(round(t, 4), k[:90]) for t, k in fparts[:2] + bparts[:6]]), \
        ops.selective_scan(*args[:7], args[7], True, True), leaves[1].grad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="scanfwd.json")
    ap.add_argument("--model", action="store_true")
    a = ap.parse_args()
    rows, outs = {}, {}
    shapes = [("bench B8 D4096 (B,D,L)", 8, 4096, "rows")]
    if a.model:
        shapes.append(("model B8 D1536 channels-last", 8, 1536, "channels_last"))
    for label, B, D, layout in shapes:
        args = scan_inputs(B, D, 2048, 16, layout)
        for tag in ("rows", "block"):
            os.environ["SSM_SCAN_ROWS"] = "1" if tag == "rows" else "0"
            r, outs[tag], dd = shape_times(args, B, D, 2048)
            rows[f"{tag} {label}"] = r
            print(f"{tag:6s} {label:24s} fwd kernel {r['fwd_kernel_ms']:.3f} ms (event {r['fwd_event_ms']:.3f})  "
                  f"pre-pass {r['prepass_ms']:.3f} ms  fwd+bwd kernels {r['fwd_bwd_kernels_ms']:.3f} ms", flush=True)
            outs[tag] = (*outs[tag], dd)
        diff = [float((x.float() - y.float()).abs().max()) for x, y in zip(outs["rows"], outs["block"])]
        scale = [float(y.float().abs().max()) for y in outs["block"]]
        rows[f"diff {label}"] = dict(max_abs_diff_y_last_ddelta=diff, max_abs=scale)
        print(f"rows vs block {label}: max |diff| y {diff[0]:.3g} (max |y| {scale[0]:.3g}), last {diff[1]:.3g} "
              f"({scale[1]:.3g}), ddelta {diff[2]:.3g} ({scale[2]:.3g})", flush=True)
    os.environ.pop("SSM_SCAN_ROWS")
    with open(a.out, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
