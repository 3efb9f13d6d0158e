"""Times ssd_chunk_scan forward+backward on the GPU at issue 6's two shapes (bf16; D, dt_bias, softplus;
chunk 256) with the dedicated CUDA backward (SSM_SSD_BWD_KERNEL=1) beside the composed one: eager wall
time (CUDA events, median) and the profiler's kernel-time sum per call, plus the top kernels.

    python3 benchmarks/bench_ssd_bwd_cuda.py --out results/h100/bench_ssd_bwd_cuda.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from bench_cuda import kernel_ms, time_ms  # noqa: E402
from bench_ssd_cuda import TARGETS, fwd_bwd_fn, inputs, kernel_table  # noqa: E402


def measure(B, L, mode, reps):
    os.environ["SSM_SSD_BWD_KERNEL"] = "1" if mode == "kernel" else "0"
    fb = fwd_bwd_fn(inputs(B, L))
    row = dict(B=B, L=L, bwd=mode, fwd_bwd_eager_ms=time_ms(fb, reps=reps), fwd_bwd_kernels_ms=kernel_ms(fb, iters=3))
    row["targets_gpu_eager_ms"] = TARGETS[B, L][3], TARGETS[B, L][2]
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    if mode == "kernel":
        row["top_kernels"] = kernel_table(fb, f"fwd+bwd B{B} L{L} ({mode})")
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--modes", default="kernel,composed")
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), flush=True)
    rows = []
    for mode in args.modes.split(","):
        for B, L in ((8, 2048), (1, 8192)):
            rows.append(measure(B, L, mode, 20 if mode == "kernel" else 5))
            with open(args.out, "w") as f:
                json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
