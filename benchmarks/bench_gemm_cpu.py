"""The C++ CPU GEMM (ssm/ops/cpu/gemm.cpp) against torch on the exact products of a Mamba-1 130m bf16
prefill of 8 x 512 tokens, in GFLOP per thread CPU second (torch 1 thread), alternating the forms in one
process, medians (and bests) of --reps rounds. Forms per product:
- ssm: the C++ kernel on the bf16 operands as the model holds them, writing bf16 where the model wants it;
- torch_widened: the current path (cpu_matmul: widen both operands to float32, torch's float32 GEMM into a
  float32 buffer, round to bf16);
- torch_fp32: torch's float32 GEMM alone on float32 operands (widening and rounding free: the floor's form).

Usage: python benchmarks/bench_gemm_cpu.py [--reps 5] [--blocks kc,mc,nc] [--only in_proj,...] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ssm.ops import cpu_matmul  # noqa: E402

B, L, D_MODEL, D_INNER, N, RANK = 8, 512, 768, 1536, 16, 48
T = B * L


def shapes(dtype):
    """name -> (flops, {form: thunk}) with the model's operand layouts."""
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g).to(dtype)
    u, w_in = r(T, D_MODEL), r(2 * D_INNER, D_MODEL)
    xc, w_x = r(B, D_INNER, L), r(RANK + 2 * N, D_INNER)
    xdbl_t, w_dt = r(B, RANK + 2 * N, L), r(D_INNER, RANK)
    y, w_out = r(T, D_INNER), r(D_MODEL, D_INNER)
    xz, xd = torch.empty(2 * D_INNER, T, dtype=dtype), torch.empty(B, RANK + 2 * N, L, dtype=dtype)
    dt, out = torch.empty(B, L, D_INNER, dtype=dtype), torch.empty(T, D_MODEL, dtype=dtype)
    a_dt = xdbl_t[:, :RANK].transpose(1, 2)  # (B, L, rank) view of the model's x_dbl^T
    f32 = {k: v.float() for k, v in dict(u=u, w_in=w_in, xc=xc, w_x=w_x, a_dt=a_dt, w_dt=w_dt, y=y,
                                         w_out=w_out).items()}
    return {
        "in_proj": (2 * T * D_MODEL * 2 * D_INNER, {
            "ssm": lambda: cpu_matmul.gemm(w_in, u.t(), xz, BLOCKS),
            "torch_widened": lambda: widened(lambda: cpu_matmul.matmul(w_in, u.t())),
            "torch_fp32": lambda: f32["w_in"] @ f32["u"].t()}),
        "x_proj": (2 * T * D_INNER * (RANK + 2 * N), {
            "ssm": lambda: cpu_matmul.gemm(w_x, xc, xd, BLOCKS),
            "torch_widened": lambda: widened(lambda: cpu_matmul.matmul(w_x, xc)),
            "torch_fp32": lambda: f32["w_x"] @ f32["xc"]}),
        "dt_proj": (2 * T * RANK * D_INNER, {
            "ssm": lambda: cpu_matmul.gemm(a_dt, w_dt.t(), dt, BLOCKS),
            "torch_widened": lambda: widened(lambda: cpu_matmul.linear(a_dt.reshape(T, RANK).contiguous(), w_dt)),
            "torch_fp32": lambda: f32["a_dt"].reshape(T, RANK) @ f32["w_dt"].t()}),
        "out_proj": (2 * T * D_INNER * D_MODEL, {
            "ssm": lambda: cpu_matmul.gemm(y, w_out.t(), out, BLOCKS),
            "torch_widened": lambda: widened(lambda: cpu_matmul.linear(y, w_out)),
            "torch_fp32": lambda: f32["y"] @ f32["w_out"].t()}),
    }


def widened(fn):
    # inside main's reuse_buffers scope: the float32 buffers kept across calls, as in the model's forward
    return fn()


def cpu_seconds(fn) -> float:
    t0 = time.thread_time()
    fn()
    return time.thread_time() - t0


def main():
    global BLOCKS
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--blocks", default="0,0,0")
    ap.add_argument("--only", default="")
    ap.add_argument("--forms", default="ssm,torch_widened,torch_fp32")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    BLOCKS = tuple(int(v) for v in args.blocks.split(","))
    torch.set_num_threads(1)
    forms = args.forms.split(",")
    results = {}
    with cpu_matmul.reuse_buffers(), torch.no_grad():
        run(args, forms, results)
    meta = {"blocks": BLOCKS, "reps": args.reps, "load_average": os.getloadavg(), "threads": 1}
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "products": results}, indent=1))
    print("load average", os.getloadavg())


def run(args, forms, results):
    for name, (flops, thunks) in shapes(torch.bfloat16).items():
        if args.only and name not in args.only.split(","):
            continue
        for f in forms:
            thunks[f]()  # warm-up
        times = {f: [] for f in forms}
        for _ in range(args.reps):
            for f in forms:
                times[f].append(cpu_seconds(thunks[f]))
        row = {f: {"median_gflops": flops / statistics.median(v) / 1e9, "best_gflops": flops / min(v) / 1e9,
                   "median_ms": 1e3 * statistics.median(v)} for f, v in times.items()}
        results[name] = row
        print(name, "  ".join(f"{f} {r['median_gflops']:.1f} ({r['best_gflops']:.1f}) GFLOP/CPU-s" for f, r in row.items()),
              flush=True)


BLOCKS = (0, 0, 0)
if __name__ == "__main__":
    main()
