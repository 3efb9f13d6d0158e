"""Times ssd_chunk_scan on the GPU (bf16; D, dt_bias, softplus; chunk 256) beside the reference
path, against the machine's limits measured in the same run (a large bf16 matmul, a large copy).

eager: CUDA events around single back-to-back calls (Python + launches included, L2 flushed);
gpu: the forward replayed in a CUDA graph, and the profiler's kernel-time sum per call (fwd+bwd).
FLOPs are the chunked algorithm's matrix products (causal half of the intra-chunk ones).
Writes JSON and, with matplotlib, a PNG of the L sweep.

    python3 benchmarks/bench_ssd_cuda.py --out results/h100/bench_ssd_cuda.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
import ssm.ops as ops  # noqa: E402
from bench_cuda import backend, copy_bandwidth, graph_time_ms, kernel_ms, time_ms  # noqa: E402

DEV = torch.device("cuda")
BF16 = torch.bfloat16
TARGETS = {  # (B, L): fwd eager, fwd gpu, fwd+bwd eager, fwd+bwd gpu (ms); mamba_ssm's in the notes
    (8, 2048): (0.30, 0.20, 1.3, 1.0),
    (1, 8192): (0.20, 0.12, 0.9, 0.6),
}


def matmul_tflops():
    a, b = (torch.randn(8192, 8192, device=DEV, dtype=BF16) for _ in range(2))
    ms = time_ms(lambda: a @ b, reps=10, flush=False)
    return 2 * 8192 ** 3 / ms / 1e9


def inputs(B, L, H=32, P=64, N=128, G=1):
    x = torch.randn(B, L, H, P, device=DEV, dtype=BF16)
    dt = torch.rand(B, L, H, device=DEV, dtype=BF16) * 0.5 - 2.0
    A = -torch.rand(H, device=DEV) - 0.5
    Bm, Cm = (torch.randn(B, L, G, N, device=DEV, dtype=BF16) * 0.3 for _ in range(2))
    return dict(x=x, dt=dt, A=A, B=Bm, C=Cm, D=torch.randn(H, device=DEV), dt_bias=torch.randn(H, device=DEV) * 0.1)


def flops(B, L, H=32, P=64, N=128, Q=256):
    nc = (L + Q - 1) // Q
    per_chunk = 2 * (Q * Q // 2) * (N + P) + 2 * 2 * Q * N * P
    return B * H * nc * per_chunk


def io_bytes(t):
    # x, dt, B, C in; y out
    return sum(v.numel() * v.element_size() for k, v in t.items() if k in ("x", "dt", "B", "C")) + \
        t["x"].numel() * t["x"].element_size()


def fwd_fn(t, chunk=256):
    return lambda: ops.mamba_chunk_scan_combined(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, D=t["D"],
                                                 dt_bias=t["dt_bias"], dt_softplus=True)


def fwd_bwd_fn(t):
    leaves = {k: v.clone().requires_grad_() for k, v in t.items()}
    dy = torch.randn_like(t["x"])

    def f():
        for v in leaves.values():
            v.grad = None
        y = fwd_fn(leaves)()
        torch.autograd.backward(y, dy)
    return f


def case(B, L, peak_tflops, copy_gbs, with_ref=True, with_bwd=True):
    t = inputs(B, L)
    fwd = fwd_fn(t)
    row = dict(B=B, L=L, H=32, P=64, N=128, chunk=256, dtype="bf16", flops=flops(B, L), io_bytes=io_bytes(t))
    row["fwd_eager_ms"] = time_ms(fwd)
    row["fwd_graph_ms"] = graph_time_ms([fwd])
    row["fwd_kernels_ms"] = kernel_ms(fwd)
    gpu = min(row["fwd_graph_ms"], row["fwd_kernels_ms"])
    row["fwd_tflops"] = row["flops"] / gpu / 1e9
    row["fwd_frac_matmul"] = row["fwd_tflops"] / peak_tflops
    row["fwd_frac_copy"] = row["io_bytes"] / gpu / 1e6 / copy_gbs
    if with_ref:
        with backend("reference"):
            row["ref_fwd_eager_ms"] = time_ms(fwd, reps=5)
    if with_bwd:
        fb = fwd_bwd_fn(t)
        row["fwd_bwd_eager_ms"] = time_ms(fb, reps=10)
        row["fwd_bwd_kernels_ms"] = kernel_ms(fb, iters=3)
        if with_ref:
            with backend("reference"):
                row["ref_fwd_bwd_eager_ms"] = time_ms(fb, reps=3)
    if (B, L) in TARGETS:
        row["targets_ms"] = dict(zip(("fwd_eager", "fwd_gpu", "fwd_bwd_eager", "fwd_bwd_gpu"), TARGETS[B, L]))
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return row


def kernel_table(fn, title):
    """The profiler's top kernels of one call (where the time goes)."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)[:12]
    print(f"-- {title}: top kernels (us)", flush=True)
    for e in rows:
        print(f"   {e.self_device_time_total:9.1f}  x{e.count:<3d} {e.key[:110]}", flush=True)
    return [dict(name=e.key, us=e.self_device_time_total, count=e.count) for e in rows]


def plot(sweep, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: no plot")
        return
    Ls = [r["L"] for r in sweep]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(Ls, [r["fwd_graph_ms"] for r in sweep], "o-", label="ssm CUDA fwd (graph)")
    ax.loglog(Ls, [r["fwd_eager_ms"] for r in sweep], "s--", label="ssm CUDA fwd (eager)")
    if all("fwd_bwd_kernels_ms" in r for r in sweep):
        ax.loglog(Ls, [r["fwd_bwd_kernels_ms"] for r in sweep], "^-", label="ssm fwd+bwd (kernels)")
    ax.set_xlabel("L (B1 H32 P64 N128 bf16, chunk 256)")
    ax.set_ylabel("ms")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_ssd_cuda.json")
    args = ap.parse_args()
    # fwd+bwd rows time the backward composed of forward scans (the CUDA default; ssm/ops/ssd_bwd.py)
    props = torch.cuda.get_device_properties(0)
    copy_gbs, peak = copy_bandwidth(), matmul_tflops()
    print(f"{props.name}: copy {copy_gbs:.0f} GB/s, bf16 matmul {peak:.0f} TFLOP/s", flush=True)
    rows = [case(8, 2048, peak, copy_gbs), case(1, 8192, peak, copy_gbs)]
    t = inputs(8, 2048)
    rows[0]["fwd_top_kernels"] = kernel_table(fwd_fn(t), "fwd B8 L2048")
    rows[0]["fwd_bwd_top_kernels"] = kernel_table(fwd_bwd_fn(t), "fwd+bwd B8 L2048")
    # the same call with smaller chunks (less causal work per chunk, more states through memory)
    rows[0]["fwd_graph_ms_by_chunk"] = {c: graph_time_ms([fwd_fn(t, c)]) for c in (64, 128, 256)}
    print("fwd B8 L2048 graph ms by chunk:", rows[0]["fwd_graph_ms_by_chunk"], flush=True)
    sweep = []
    for L in (512, 1024, 2048, 4096, 8192, 16384, 32768):
        sweep.append(case(1, L, peak, copy_gbs, with_ref=False, with_bwd=L <= 8192))
    meta = dict(device=props.name, sms=props.multi_processor_count, torch=torch.__version__, cuda=torch.version.cuda,
                python=platform.python_version(), copy_gbs=copy_gbs, matmul_tflops=peak)
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, results=rows, sweep=sweep), f, indent=1)
    plot(sweep, os.path.splitext(args.out)[0] + "_sweep.png")


if __name__ == "__main__":
    main()
