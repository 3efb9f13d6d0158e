"""Times the CUDA selective-scan backward (issue 5's bench shape: B8 D4096 L2048 N16 bf16, z, D,
dt_bias, softplus; and the mamba-130m layer shape, D 1536 channels-last) with the split-state kernel
(selective_scan_bwd_pair.cuh) and, in the same process, the previous one (SSM_SCAN_BWD_PAIR=0):
the profiler's per-kernel device time of one forward+backward, and the event median of fwd+bwd.
Writes JSON to --out.

    python3 benchmarks/device/scanbwd_bench.py --out scanbwd.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import ssm.ops as ops  # noqa: E402
from benchmarks.bench_cuda import time_ms  # noqa: E402
from benchmarks.bench_scan_layouts_cuda import kernels_by_time, scan_inputs  # noqa: E402


def case(name, B, D, L, N, layout, rows):
    inputs = scan_inputs(B, D, L, N, layout)
    leaves = [t.clone().requires_grad_() for t in inputs]
    dy = torch.randn(B, D, L, device="cuda", dtype=torch.bfloat16)

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        y = ops.selective_scan(*leaves[:7], leaves[7], True)
        torch.autograd.backward(y, dy)

    for mode in ("1", "0"):
        os.environ["SSM_SCAN_BWD_PAIR"] = mode
        parts = kernels_by_time(fwd_bwd, iters=3)
        ms = time_ms(fwd_bwd, reps=10)
        kms = sum(t for t, _ in parts)
        bwd = sum(t for t, k in parts if "bwd_kernel" in k)
        label = "pair" if mode == "1" else "old"
        rows.append(dict(case=name, kernel=label, event_ms=ms, kernels_ms=kms, bwd_kernel_ms=bwd, parts=parts[:8]))
        print(f"{name:10s} {label:4s} fwd+bwd event {ms:7.3f} ms kernels {kms:7.3f} ms  bwd kernel {bwd:7.3f} ms",
              flush=True)
        for t, k in parts[:5]:
            print(f"      {t:7.3f} ms  {k[:90]}", flush=True)
    os.environ.pop("SSM_SCAN_BWD_PAIR", None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="scanbwd.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    print(torch.cuda.get_device_name(), flush=True)
    case("bench", 8, 4096, 2048, 16, "contiguous", rows)
    case("mamba130m", 8, 1536, 2048, 16, "channels_last", rows)
    with open(args.out, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
