"""Benchmark of ssd_chunk_scan on the CPU: the C++ kernel against the reference path (pure
PyTorch, chunked algorithm), forward and forward+backward, float32 and bfloat16.

Prints a table and writes benchmarks/results/cpu/ssd.json (machine, versions, shapes, medians).
Usage: python benchmarks/bench_ssd.py [--lengths 512 2048] [--repeats 5] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import ssm.ops as ops
from ssm.utils import dispatch

SHAPE = dict(batch=1, heads=24, headdim=64, dstate=128, groups=1, chunk_size=256)
OUT = Path(__file__).resolve().parent / "results" / "cpu" / "ssd.json"


def inputs(L: int, dtype: torch.dtype, grad: bool):
    b, H, P, N, G = SHAPE["batch"], SHAPE["heads"], SHAPE["headdim"], SHAPE["dstate"], SHAPE["groups"]
    t = dict(x=torch.randn(b, L, H, P, dtype=dtype), dt=(torch.rand(b, L, H) * 0.5).to(dtype),
             A=-torch.rand(H) - 0.5, B=torch.randn(b, L, G, N, dtype=dtype) * 0.3,
             C=torch.randn(b, L, G, N, dtype=dtype) * 0.3, D=torch.randn(H), dt_bias=torch.randn(H) * 0.1)
    return {k: v.requires_grad_(grad) for k, v in t.items()}


def call(t):
    return ops.ssd_chunk_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], SHAPE["chunk_size"], D=t["D"],
                              dt_bias=t["dt_bias"], dt_softplus=True)


def timed(fn, repeats: int) -> float:
    """Median wall time in ms of fn() after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(backend: str, L: int, dtype: torch.dtype, backward: bool, repeats: int) -> float:
    os.environ["SSM_BACKEND"] = backend
    t = inputs(L, dtype, backward)
    if not backward:
        with torch.no_grad():
            return timed(lambda: call(t), repeats)
    dy = torch.randn(SHAPE["batch"], L, SHAPE["heads"], SHAPE["headdim"], dtype=dtype)
    return timed(lambda: call(t).backward(dy), repeats)


def machine_limits() -> dict:
    """Measured memory bandwidth (large copy) and float32 matmul rate, with torch's threads."""
    src = torch.empty(64 * 2**20 // 4)
    dst = torch.empty_like(src)
    copy_ms = timed(lambda: dst.copy_(src), 5)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    mm_ms = timed(lambda: a @ b, 5)
    return dict(copy_GBps=2 * src.numel() * 4 / copy_ms / 1e6, matmul_GFLOPs=2 * 2048**3 / mm_ms / 1e6)


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mod = dispatch.cpu_module()
    return dict(cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version(), isa=mod.active_isa() if mod else None,
                load_average=os.getloadavg())


def flops(L: int) -> float:
    # the recurrence: state update and output, 2 multiply-adds per state element per token
    return 4.0 * SHAPE["batch"] * L * SHAPE["heads"] * SHAPE["headdim"] * SHAPE["dstate"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--out", type=Path, default=OUT, help="where the JSON goes")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    torch.manual_seed(0)
    limits = machine_limits()
    rows = []
    print(f"{'L':>5} {'dtype':>9} {'pass':>8} {'reference ms':>13} {'cpu ms':>9} {'speedup':>8} {'cpu GFLOP/s':>12}")
    for L in args.lengths:
        for dtype in (torch.float32, torch.bfloat16):
            for backward in (False, True):
                ref = measure("reference", L, dtype, backward, max(2, repeats // 2) if backward else repeats)
                cpu = measure("cpu", L, dtype, backward, repeats)
                gflops = flops(L) / cpu / 1e6 if not backward else None
                row = dict(L=L, dtype=str(dtype).replace("torch.", ""), pass_="fwd+bwd" if backward else "fwd",
                           reference_ms=ref, cpu_ms=cpu, speedup=ref / cpu, cpu_GFLOPs=gflops,
                           fraction_of_matmul=None if gflops is None else gflops / limits["matmul_GFLOPs"])
                rows.append(row)
                print(f"{L:>5} {row['dtype']:>9} {row['pass_']:>8} {ref:>13.1f} {cpu:>9.1f} {ref / cpu:>7.1f}x "
                      f"{'' if gflops is None else f'{gflops:.1f}':>12}")
    os.environ.pop("SSM_BACKEND", None)
    result = dict(op="ssd_chunk_scan", shape=SHAPE, machine=machine_info(), limits=limits, results=rows,
                  note="median wall ms; reference = ssm.ops.python.reference (chunked PyTorch); "
                       "GFLOP/s counts 4*B*L*H*P*N per forward")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"machine limits: copy {limits['copy_GBps']:.1f} GB/s, matmul {limits['matmul_GFLOPs']:.1f} GFLOP/s; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
