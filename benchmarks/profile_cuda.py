"""Where the GPU time goes: torch.profiler tables (top kernels by device time, top ops by CPU
time) for the end-to-end cases of bench_models_cuda.py and the SSD / scan ops of bench_ssd_cuda.py
and bench_cuda.py. A diagnostic, not a benchmark: it prints tables and writes nothing else.

Usage: python benchmarks/profile_cuda.py [--cases prefill,train,decode,ssd,scan] [--models ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import ssm.ops as ops  # noqa: E402
from bench_models_cuda import PROMPT, VOCAB, make_model  # noqa: E402

DEV = torch.device("cuda")
BF16 = torch.bfloat16


def table(fn, title, rows=25, warmup=2):
    """Run fn warmup times, then once under the profiler; print device and CPU tables."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    dev_total = sum(e.self_device_time_total for e in events)
    print(f"\n== {title}: device total {dev_total / 1e3:.2f} ms", flush=True)
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:rows]:
        if e.self_device_time_total > 0:
            print(f"  dev {e.self_device_time_total / 1e3:8.3f} ms x{e.count:<5d} {e.key[:100]}")
    print(f"-- {title}: top CPU ops (self CPU)")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]:
        print(f"  cpu {e.self_cpu_time_total / 1e3:8.3f} ms x{e.count:<5d} {e.key[:100]}")
    sys.stdout.flush()


def e2e(name, cases):
    model = make_model(name)
    ids = torch.randint(0, VOCAB, (8, 2048), device=DEV)
    if "prefill" in cases:
        with torch.inference_mode():
            table(lambda: model(ids), f"{name} prefill 8x2048")
    if "train" in cases:
        model.train()

        def step():
            loss = F.cross_entropy(model(ids[:, :-1]).logits.flatten(0, 1).float(), ids[:, 1:].flatten())
            loss.backward()
        table(step, f"{name} train 8x2047", warmup=1)
        model.zero_grad(set_to_none=True)
        model.eval()
    if "decode" in cases:
        for batch in (1, 64):
            prompt = torch.randint(0, VOCAB, (batch, PROMPT), device=DEV)
            gen = lambda: model.generate(prompt, max_length=PROMPT + 32, cg=True)  # noqa: E731
            table(gen, f"{name} generate 32 tokens cg=True batch {batch}", warmup=1)
    del model
    torch.cuda.empty_cache()


def ssd_case():
    B, L, H, P, N = 8, 2048, 32, 64, 128
    x = torch.randn(B, L, H, P, device=DEV, dtype=BF16, requires_grad=True)
    dt = (torch.rand(B, L, H, device=DEV, dtype=BF16) * 0.5 - 2.0).requires_grad_()
    A = (-torch.rand(H, device=DEV) - 0.5).requires_grad_()
    Bm, Cm = ((torch.randn(B, L, 1, N, device=DEV, dtype=BF16) * 0.3).requires_grad_() for _ in range(2))
    D, bias = torch.randn(H, device=DEV, requires_grad=True), torch.randn(H, device=DEV, requires_grad=True)
    fwd = lambda: ops.mamba_chunk_scan_combined(x, dt, A, Bm, Cm, 256, D=D, dt_bias=bias, dt_softplus=True)  # noqa
    with torch.no_grad():
        table(fwd, "ssd fwd B8 L2048 H32 P64 N128")
    dy = torch.randn_like(x)
    table(lambda: torch.autograd.backward(fwd(), dy), "ssd fwd+bwd B8 L2048")


def scan_case():
    B, D, L, N = 8, 4096, 2048, 16
    u, z = (torch.randn(B, D, L, device=DEV, dtype=BF16, requires_grad=True) for _ in range(2))
    delta = (torch.randn(B, D, L, device=DEV, dtype=BF16) * 0.5 - 1.0).requires_grad_()
    A = (-torch.rand(D, N, device=DEV) - 0.5).requires_grad_()
    Bm, Cm = (torch.randn(B, 1, N, L, device=DEV, dtype=BF16, requires_grad=True) for _ in range(2))
    Dp, bias = torch.randn(D, device=DEV, requires_grad=True), torch.randn(D, device=DEV, requires_grad=True)
    dy = torch.randn_like(u)
    table(lambda: torch.autograd.backward(ops.selective_scan(u, delta, A, Bm, Cm, Dp, z, bias, True), dy),
          "selective_scan fwd+bwd B8 D4096 L2048 N16")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="prefill,train,decode,ssd,scan")
    ap.add_argument("--models", default="mamba2-130m,mamba-130m")
    args = ap.parse_args()
    cases = args.cases.split(",")
    print(torch.cuda.get_device_name(), flush=True)
    if "ssd" in cases:
        ssd_case()
    if "scan" in cases:
        scan_case()
    for name in args.models.split(","):
        e2e(name, cases)


if __name__ == "__main__":
    main()
