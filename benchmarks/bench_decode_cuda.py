"""GPU decode benchmark: the state-step kernels of issue 5 (CUDA graph over rotating state
buffers) in both row shapes, the fused Mamba-2 conv + state step against the two separate ops,
and end-to-end decode latency per token with cg=True (issue 6's conditions, bench_models_cuda's
decode_ms_per_token) with a profile of the kernels of one decoded token.

Usage: python benchmarks/bench_decode_cuda.py [--parts e2e,profile,steps,fused] [--out PATH]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_cuda import graph_time_ms  # noqa: E402
from bench_models_cuda import decode_ms_per_token, make_model  # noqa: E402

import ssm.ops as ops  # noqa: E402
from ssm.ops import conv_state_step as css  # noqa: E402
from ssm.ops import norm_gemv as ng  # noqa: E402
from ssm.modules import block  # noqa: E402

DEV, BF16 = torch.device("cuda"), torch.bfloat16
ROWS: list = []


def emit(**row):
    ROWS.append(row)
    print("  " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def _nbuf(nbytes):
    return max(2, min(64, (200 << 20) // nbytes))


def step_fns(batch, H, P, N, mamba1):
    """One state-step call per rotating state buffer (bench_cuda.step_case's shapes)."""
    if mamba1:
        states = [torch.randn(batch, H, N, device=DEV, dtype=BF16) for _ in range(_nbuf(batch * H * N * 2))]
        x, dt, z = (torch.randn(batch, H, device=DEV, dtype=BF16) for _ in range(3))
        A, Bm, Cm = -torch.rand(H, N, device=DEV), *(torch.randn(batch, N, device=DEV, dtype=BF16) for _ in range(2))
        Dp, bias = torch.randn(H, device=DEV), torch.randn(H, device=DEV)
    else:
        states = [torch.randn(batch, H, P, N, device=DEV, dtype=BF16) for _ in range(_nbuf(batch * H * P * N * 2))]
        x, z = (torch.randn(batch, H, P, device=DEV, dtype=BF16) for _ in range(2))
        dt = torch.randn(batch, H, device=DEV, dtype=BF16)
        A, Dp, bias = -torch.rand(H, device=DEV), torch.randn(H, device=DEV), torch.randn(H, device=DEV)
        Bm, Cm = (torch.randn(batch, 1, N, device=DEV, dtype=BF16) for _ in range(2))
    return [lambda s=s: ops.selective_state_step(s, x, dt, A, Bm, Cm, Dp, z, bias, True) for s in states]


def bench_steps():
    cases = [("Mamba-1 b64 D5120 N16", 64, 5120, 1, 16, True, 10.0),
             ("Mamba-2 b1 H80 P64 N128", 1, 80, 64, 128, False, 3.0),
             ("Mamba-2 b64 H80 P64 N128", 64, 80, 64, 128, False, 70.0)]
    for name, batch, H, P, N, m1, target in cases:
        for wide in ("auto", "0", "1"):
            if wide == "auto":
                os.environ.pop("SSM_STEP_WIDE", None)
            else:
                os.environ["SSM_STEP_WIDE"] = wide
            us = graph_time_ms(step_fns(batch, H, P, N, m1)) * 1e3
            emit(part="step", case=name, wide=wide, us=us, target_us=target)
    os.environ.pop("SSM_STEP_WIDE", None)


def fused_fns(batch, H, P, N, G=1, W=4):
    """Fused conv + state step over rotating (conv_state, ssm_state) pairs, Mamba-2 cache layouts."""
    conv_dim = H * P + 2 * G * N
    row = torch.randn(batch, conv_dim + H, device=DEV, dtype=BF16)
    xBC, dt = row[:, :conv_dim], row[:, conv_dim:]
    w, b = torch.randn(conv_dim, 1, W, device=DEV, dtype=BF16), torch.randn(conv_dim, device=DEV, dtype=BF16)
    A, Dp, bias = -torch.rand(H, device=DEV), torch.randn(H, device=DEV), torch.randn(H, device=DEV, dtype=BF16)
    n = _nbuf(batch * H * P * N * 2)
    caches = [(torch.randn(batch, W, conv_dim, device=DEV, dtype=BF16).transpose(1, 2),
               torch.randn(batch, H, P, N, device=DEV, dtype=BF16)) for _ in range(n)]
    return [lambda c=c: css.conv_state_step(xBC, c[0], w, b, c[1], dt, A, Dp, bias, ngroups=G) for c in caches]


def bench_fused():
    for name, batch, H, P, N in [("mamba2-130m layer b1", 1, 24, 64, 128), ("mamba2-130m layer b64", 64, 24, 64, 128)]:
        css.MAX_BATCH = 65535  # time the kernel at every batch
        for fused in (True, False):
            css.FUSED = fused
            us = graph_time_ms(fused_fns(batch, H, P, N)) * 1e3
            emit(part="conv+step", case=name, fused=fused, us=us)
    css.FUSED, css.MAX_BATCH = True, 8


def _variant(name):
    """Set the decode switches: 'fused' (default), 'gemv' (+ the small-batch kernel for every other
    projection), 'noprenorm' (the blocks' add + norm as its own kernel, in_proj by cuBLAS),
    'unfused' (the separate ops: the path before this work, less the weight casts)."""
    css.FUSED = name != "unfused"
    ng.PLAIN = name == "gemv"
    block.PRENORM_DECODE = name not in ("noprenorm", "unfused")


def bench_e2e(names, batches):
    for name in names:
        model = make_model(name)
        runs = [(v, b) for b in batches for v in ("fused", "unfused")] + [("noprenorm", 1), ("gemv", 1)]
        for variant, batch in runs:
            _variant(variant)
            model.__dict__.pop("_decoding_cache", None)  # recapture the graph with these switches
            emit(part="decode", model=name, variant=variant, batch=batch,
                 ms_per_token=decode_ms_per_token(model, batch))
        _variant("fused")
        del model
        torch.cuda.empty_cache()


def bench_profiles(names):
    for name in names:
        profile_token(make_model(name), name)
        torch.cuda.empty_cache()


def profile_token(model, name, batch=1, tokens=32):
    """Kernels of generating `tokens` tokens (graph replays and the 16-token prompt's prefill), per token."""
    ids = torch.randint(0, 1000, (batch, 16), device=DEV)
    model.generate(ids, max_length=16 + tokens, cg=True)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        model.generate(ids, max_length=16 + tokens, cg=True)
        torch.cuda.synchronize()
    rows = collections.defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            rows[e.name[:90]][0] += 1
            rows[e.name[:90]][1] += e.device_time
    total = sum(v[1] for v in rows.values())
    print(f"  profile {name} b{batch}: {total / tokens:.1f} us of kernels per token (prefill included)")
    for k, (n, us) in sorted(rows.items(), key=lambda kv: -kv[1][1])[:14]:
        print(f"    {us / tokens:7.2f} us/token {n / tokens:6.2f}/token  {k}")
    emit(part="profile", model=name, batch=batch, kernel_us_per_token=total / tokens,
         kernels={k: [n / tokens, us / tokens] for k, (n, us) in rows.items()})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="steps,fused,e2e,profile")
    ap.add_argument("--models", default="mamba2-130m,mamba-130m")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--out", default="bench_decode_cuda.json")
    args = ap.parse_args()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    parts = args.parts.split(",")
    names, batches = args.models.split(","), [int(b) for b in args.batches.split(",")]
    try:
        if "e2e" in parts:
            bench_e2e(names, batches)
        if "steps" in parts:
            bench_steps()
        if "fused" in parts:
            bench_fused()
        if "profile" in parts:
            bench_profiles(names)
    finally:
        Path(args.out).write_text(json.dumps(dict(device=torch.cuda.get_device_name(), rows=ROWS), indent=1))


if __name__ == "__main__":
    main()
