"""Where a Mamba-1 prefill goes on the CPU: thread CPU time of each part of `MambaLMHeadModel`'s
forward (mamba-130m shape, random weights, last-token logits as generation's prefill), torch 1 thread.

Parts are timed by wrapping the functions the forward calls: the layer norms, each matrix product
by its layer (operands widened, GEMM, product rounded back), the conv, the projections' copies, the
scan, out_proj's input copy, lm_head; "other" is the forward's total minus the parts (embedding,
residual stream, Python). The wrappers cost ~1 us a call (a few hundred calls a forward).
--root times another checkout's `ssm` (e.g. main, for before / after in alternating processes).
Prints a table (medians over --reps) and writes JSON (--out).

Usage: python benchmarks/bench_prefill_parts_cpu.py [--batch 8] [--seqlen 512] [--dtype bfloat16]
       [--reps 3] [--root PATH] [--out PATH]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if "--root" in sys.argv:
    ROOT = Path(sys.argv[sys.argv.index("--root") + 1]).resolve()
sys.path.insert(0, str(ROOT / "benchmarks"))  # its bench_models_cpu puts that checkout first on the path
from bench_models_cpu import VOCAB, make_ssm  # noqa: E402
from ssm import ops  # noqa: E402
from ssm.models import lm  # noqa: E402
from ssm.ops import cpu_matmul, mamba_inner  # noqa: E402

TIMES: dict = collections.defaultdict(float)
PRODUCTS = {(768, 3072): "in_proj", (1536, 80): "x_proj", (48, 1536): "dt_proj", (1536, 768): "out_proj"}
# parts whose time another part includes
NESTED = {"x_proj": "projections", "dt_proj": "projections", "product 768x50280": "lm_head"}


def timed(name, fn):
    def wrapper(*args, **kwargs):
        t0 = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += time.thread_time() - t0
    return wrapper


def product_name(k: int, n: int) -> str:
    return PRODUCTS.get((k, n), f"product {k}x{n}")


def instrument():
    """Wrap the forward's parts in timers; returns the function that puts the originals back."""
    def product(f, shape):  # the layer of a product from its weight's (N, K) shape
        return lambda *a: timed(product_name(*shape(a)), f)(*a)
    patches = [(cpu_matmul, "linear", lambda f: product(f, lambda a: (a[1].shape[1], a[1].shape[0]))),
               (cpu_matmul, "matmul", lambda f: product(f, lambda a: (a[0].shape[1], a[0].shape[0]))),
               (lm.MambaLMHeadModel, "_logits", lambda f: timed("lm_head", f)),
               (ops, "layer_norm_fn", lambda f: timed("layer norms", f)),
               (mamba_inner, "_conv_silu", lambda f: timed("conv", f)),
               (mamba_inner, "_project", lambda f: timed("projections", f)),
               (mamba_inner, "_scan", lambda f: timed("scan", f)),
               (mamba_inner, "_cpu_contiguous", lambda f: timed("copies", f))]
    patches = [p for p in patches if hasattr(p[0], p[1])]  # parts an older or newer checkout lacks
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, wrap in patches:
        setattr(owner, name, wrap(getattr(owner, name)))
    return lambda: [setattr(owner, name, f) for owner, name, f in originals]


def table(totals: list, parts: list) -> list:
    """Median CPU seconds per part; "projections" without its nested products; other = the rest."""
    names = sorted({n for p in parts for n in p}, key=lambda n: -statistics.median(p.get(n, 0) for p in parts))
    med = {n: statistics.median(p.get(n, 0.0) for p in parts) for n in names}
    for inner, outer in NESTED.items():
        if outer in med:
            med[outer] -= med.get(inner, 0.0)
    total = statistics.median(totals)
    rows = [{"part": n + (" (copies and splits)" if n == "projections" else ""), "cpu_s": med[n]} for n in names]
    rows.append({"part": "other (total - parts)", "cpu_s": total - sum(med.values())})
    rows.append({"part": "total", "cpu_s": total})
    for r in rows:
        r["share"] = r["cpu_s"] / total
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="8 x 64 tokens, one forward")
    parser.add_argument("--root", default=str(ROOT), help="checkout whose ssm is timed")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.quick:
        args.seqlen, args.reps = 64, 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    print(f"ssm from {Path(ops.__file__).parents[1]}")
    model = make_ssm("mamba1").to(getattr(torch, args.dtype))
    restore = instrument()
    ids = torch.randint(0, VOCAB, (args.batch, args.seqlen))
    totals, parts = [], []
    load = [os.getloadavg()]
    try:
        with torch.no_grad():
            model(ids[:, :16], num_last_tokens=1)  # warm-up
            for rep in range(args.reps):
                TIMES.clear()
                t0 = time.thread_time()
                model(ids, num_last_tokens=1)
                totals.append(time.thread_time() - t0)
                parts.append(dict(TIMES))
                print(f"rep {rep}: {totals[-1]:.3f} CPU s", flush=True)
    finally:
        restore()
        torch.set_num_threads(threads)
    load.append(os.getloadavg())
    rows = table(totals, parts)
    for r in rows:
        print(f"{r['part']:34s}{r['cpu_s']:9.3f} s{100 * r['share']:6.1f}%")
    if args.out:
        info = {"ssm": str(Path(ops.__file__).parents[1]), "batch": args.batch, "seqlen": args.seqlen,
                "dtype": args.dtype, "threads": 1, "load_avg": load, "totals": totals, "rows": rows}
        Path(args.out).write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
