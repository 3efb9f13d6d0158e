"""Benchmark of the norm and conv ops on the CPU: the C++ kernels (backend "cpu") against the
reference path (backend "reference") and PyTorch's own eager ops (F.layer_norm / F.rms_norm /
F.conv1d), forward and forward+backward. Prints a table and writes JSON (machine, versions,
shapes, dtype, medians) to benchmarks/results/cpu/norm_conv.json.

Usage: python benchmarks/bench_norm_conv.py [--reps N] [--out PATH]

Note: every output is freshly allocated per call, as in training. At 4096 x 2048 float32 an
output is exactly 32 MiB, where glibc serves each allocation with a new mmap: page faults then
dominate every implementation (ours and PyTorch's alike; 4088 rows run about 5x faster).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ssm.ops as ops  # noqa: E402
from ssm.utils import dispatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ESIZE = {torch.float32: 4, torch.bfloat16: 2}


# ---- timing and machine limits -----------------------------------------------------------------

def median_ms(fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measured_limits(reps: int) -> dict:
    """Memory bandwidth from a large copy (read + write) and FLOP/s from a large matmul."""
    src = torch.empty(64 * 2**20, dtype=torch.float32).normal_()  # 256 MiB
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src), reps)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    mm_ms = median_ms(lambda: a @ b, max(3, reps // 2))
    return {"copy_GBps": 2 * src.numel() * 4 / copy_ms / 1e6, "matmul_GFLOPs": 2 * 2048**3 / mm_ms / 1e6}


def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    mod = dispatch.cpu_module()
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "ssm_isa": mod.active_isa() if mod is not None else None, "commit": commit,
            "load_avg": os.getloadavg()}


def with_backend(backend: str, fn):
    """fn run with SSM_BACKEND forced (None: PyTorch's own op, no ssm)."""
    def run():
        old = os.environ.get("SSM_BACKEND")
        if backend is not None:
            os.environ["SSM_BACKEND"] = backend
        try:
            fn()
        finally:
            os.environ.pop("SSM_BACKEND", None)
            if old is not None:
                os.environ["SSM_BACKEND"] = old
    return run


# ---- cases ---------------------------------------------------------------------------------------
# A case: inputs(dtype) -> leaves; impls: backend -> fn(*leaves) returning the outputs;
# tensors_fwd / tensors_bwd: (M, N)-sized tensors a perfect kernel reads + writes once.

def norm_cases(M: int, N: int):
    def residual_inputs(dtype):
        return [torch.randn(M, N).to(dtype), torch.randn(M, N).to(dtype), torch.rand(N) + 0.5, torch.randn(N)]

    def gated_inputs(dtype):
        return [torch.randn(M, N).to(dtype), torch.randn(M, N).to(dtype), torch.rand(N) + 0.5]

    def fused(is_rms):
        return lambda x, r, w, b: ops.fused_layer_norm(x, w, b, r, is_rms=is_rms, prenorm=True)

    def torch_ln(x, r, w, b):
        s = x + r
        return F.layer_norm(s, (N,), w.to(x.dtype), b.to(x.dtype)), s

    def torch_rms(x, r, w, b):
        s = x + r
        return F.rms_norm(s, (N,), w.to(x.dtype), eps=1e-5), s

    def gated(x, z, w):
        return ops.rmsnorm_fn(x, w, None, z, group_size=None, norm_before_gate=False)

    def torch_gated(x, z, w):
        return F.rms_norm(x * F.silu(z), (N,), w.to(x.dtype), eps=1e-6)

    shape = {"M": M, "N": N}
    return [
        dict(op="layer_norm+residual", shape=shape, inputs=residual_inputs, tensors_fwd=4, tensors_bwd=5,
             impls={"cpu": fused(False), "reference": fused(False), "torch": torch_ln}),
        dict(op="rms_norm+residual", shape=shape, inputs=residual_inputs, tensors_fwd=4, tensors_bwd=5,
             impls={"cpu": fused(True), "reference": fused(True), "torch": torch_rms}),
        dict(op="gated_rms_norm", shape=shape, inputs=gated_inputs, tensors_fwd=3, tensors_bwd=5,
             impls={"cpu": gated, "reference": gated, "torch": torch_gated}),
    ]


def conv_cases(B: int, D: int, L: int, W: int):
    def inputs(dtype):
        return [torch.randn(B, D, L).to(dtype), torch.randn(D, W) * 0.5, torch.randn(D)]

    def conv(x, w, b):
        return ops.dw_causal_conv(x, w, b, "silu")

    def torch_conv(x, w, b):
        return F.silu(F.conv1d(F.pad(x, (W - 1, 0)), w.to(x.dtype)[:, None, :], b.to(x.dtype), groups=D))

    def step_inputs(dtype):
        return [torch.randn(B, D).to(dtype), torch.randn(B, D, W).to(dtype), torch.randn(D, W), torch.randn(D)]

    def step(x, state, w, b):
        return ops.causal_conv1d_update(x, state, w, b, "silu")

    return [
        dict(op="dw_causal_conv", shape={"B": B, "D": D, "L": L, "W": W}, inputs=inputs, tensors_fwd=2,
             tensors_bwd=3, impls={"cpu": conv, "reference": conv, "torch": torch_conv}),
        dict(op="conv_update(decode)", shape={"B": B, "D": D, "L": 1, "W": W}, inputs=step_inputs, tensors_fwd=None,
             tensors_bwd=None, impls={"cpu": step, "reference": step}, forward_only=True),
    ]


# ---- running -------------------------------------------------------------------------------------

def runner(case, impl, backend, dtype, backward: bool):
    """A zero-argument callable running one forward (and backward) on fresh-graph inputs."""
    leaves = case["inputs"](dtype)
    if backward:
        leaves = [t.requires_grad_() for t in leaves]
        outs = impl(*leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        grads = [torch.randn_like(o) for o in outs]

    def fwd():
        impl(*leaves)

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        out = impl(*leaves)
        torch.autograd.backward(out if isinstance(out, tuple) else (out,), grads)

    return with_backend(None if backend == "torch" else backend, fwd_bwd if backward else fwd)


def run_case(case, dtype, backward, reps, limits):
    rows = []
    for backend, impl in case["impls"].items():
        ms = median_ms(runner(case, impl, backend, dtype, backward), reps)
        rows.append({"op": case["op"], "shape": case["shape"], "dtype": str(dtype).replace("torch.", ""),
                     "pass": "fwd+bwd" if backward else "fwd", "impl": backend, "median_ms": ms})
    ref_ms = next(r["median_ms"] for r in rows if r["impl"] == "reference")
    count = case["tensors_bwd"] + case["tensors_fwd"] if backward else case["tensors_fwd"]
    for r in rows:
        r["speedup_vs_reference"] = ref_ms / r["median_ms"]
        if count:
            nbytes = count * _elems(case["shape"]) * ESIZE[dtype]
            r["GBps"] = nbytes / r["median_ms"] / 1e6
            r["fraction_of_copy_bw"] = r["GBps"] / limits["copy_GBps"]
    return rows


def _elems(shape: dict) -> int:
    if "M" in shape:
        return shape["M"] * shape["N"]
    return shape["B"] * shape["D"] * shape["L"]


def print_table(rows):
    print(f"{'op':22} {'shape':28} {'dtype':9} {'pass':8} {'impl':10} {'ms':>9} {'x ref':>7} {'GB/s':>7} {'%bw':>5}")
    for r in rows:
        shape = "x".join(f"{k}{v}" for k, v in r["shape"].items())
        bw = f"{r['GBps']:7.2f} {100 * r['fraction_of_copy_bw']:5.1f}" if "GBps" in r else f"{'-':>7} {'-':>5}"
        print(f"{r['op']:22} {shape:28} {r['dtype']:9} {r['pass']:8} {r['impl']:10} {r['median_ms']:9.3f} "
              f"{r['speedup_vs_reference']:7.1f} {bw}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu/norm_conv.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    limits = measured_limits(args.reps)
    cases = norm_cases(4096, 768) + norm_cases(4096, 2048) + conv_cases(1, 1536, 2048, 4)
    rows = []
    for case in cases:
        for dtype in (torch.float32, torch.bfloat16):
            for backward in (False, True) if not case.get("forward_only") else (False,):
                rows += run_case(case, dtype, backward, args.reps, limits)
    print(f"machine: {machine_info()}\nlimits: {limits}")
    print_table(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), "limits": limits, "reps": args.reps, "results": rows},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
