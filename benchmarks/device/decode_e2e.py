"""Device-round timings of batch-1 decoding (issues 5 and 6), in one process:
1. decode latency per token with cg=True for the four model shapes (bench_models_cuda's method),
   with the defaults (streamed GEMV + PDL) and PDL off (SSM_PDL=0);
2. the small-batch GEMV alone at the 1.3b / 130m shapes (streamed kernel with PDL on and off, cuBLAS)
   in a CUDA graph over weight copies larger than L2, against copy bandwidth;
3. a profile of graph-replayed tokens: kernels per token, their names and device times.
Writes OUT/decode_e2e.json after every item (a timeout keeps what finished).

    python3 benchmarks/device/decode_e2e.py --out OUT_DIR [--models a,b] [--skip micro,profile,variants]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict

import torch
import torch.nn as nn

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import bench_cuda as bc  # noqa: E402
import bench_models_cuda as bm  # noqa: E402
from ssm.ops import norm_gemv as ng  # noqa: E402

DEV, BF16 = bc.DEV, bc.BF16
OUT: dict = {"e2e": [], "gemv": [], "profile": {}}
VARIANTS = {"default": {}, "no_pdl": {"SSM_PDL": "0"}, "conv_xproj": {}}


def guarded(fn):
    """Runs fn(*args); an error is printed and recorded, and the next item runs."""
    def run(*args):
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - a diagnostic run: report and go on
            msg = f"{fn.__name__}{tuple(a for a in args if isinstance(a, str))}: {type(e).__name__}: {e}"
            OUT.setdefault("errors", []).append(msg[:400])
            print("  Error " + msg[:300], flush=True)
            set_env({})
    return run


def save(path):
    with open(path, "w") as f:
        json.dump(OUT, f, indent=1)


def set_env(env):
    for k in ("SSM_PDL",):
        os.environ.pop(k, None)
    os.environ.update(env)


def gen_s(model, ids, new):
    torch.cuda.synchronize()
    t = time.perf_counter()
    model.generate(ids, max_length=bm.PROMPT + new, cg=True)
    torch.cuda.synchronize()
    return time.perf_counter() - t


def per_token_ms(model, reps=2):
    """(t(128 new) - t(1 new)) / 127, cg=True, batch 1; a fresh graph (the variant's kernels).
    reps=0: only capture the graph."""
    model._decoding_cache = None
    ids = torch.randint(0, bm.VOCAB, (1, bm.PROMPT), device=DEV)
    gen_s(model, ids, bm.NEW)
    if reps == 0:
        return None
    gen_s(model, ids, 1)
    long = statistics.median(gen_s(model, ids, bm.NEW) for _ in range(reps))
    short = statistics.median(gen_s(model, ids, 1) for _ in range(reps))
    return (long - short) / (bm.NEW - 1) * 1e3


@guarded
def profile_tokens(model, name, n=4):
    """Kernels of n graph replays (one token each): per token count, total and per-name device time."""
    cache = model._decoding_cache
    ids = torch.randint(0, bm.VOCAB, (1, 1), device=DEV)
    pos = torch.full_like(ids, bm.PROMPT)
    cache.run(ids, pos, bm.PROMPT)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            cache.run(ids, pos, bm.PROMPT)
        torch.cuda.synchronize()
    per = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time_total > 0:
            key = e.name[:90]
            per[key][0] += 1
            per[key][1] += e.device_time_total
    rows = sorted(((k, c / n, us / n) for k, (c, us) in per.items()), key=lambda r: -r[2])
    # wall time of back-to-back replays (with run's input copies and logits clone; no sampling)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(50):
        cache.run(ids, pos, bm.PROMPT)
    end.record()
    end.synchronize()
    OUT["profile"][name] = dict(kernels_per_token=sum(r[1] for r in rows), kernel_us_per_token=sum(r[2] for r in rows),
                                replay_us=start.elapsed_time(end) / 50 * 1e3,
                                top=[dict(name=k, count=c, us=u) for k, c, u in rows[:14]])
    p = OUT["profile"][name]
    print(f"  profile {name}: {p['kernels_per_token']:.0f} kernels/token, {p['kernel_us_per_token']:.0f} us kernels/token,"
          f" replay {p['replay_us']:.0f} us")
    for r in p["top"][:8]:
        print(f"     {r['count']:5.1f} x {r['us'] / max(r['count'], 1):6.1f} us  {r['name'][:70]}")


@guarded
def gemv_case(label, M, K, copy_gbs, variants=True):
    """One linear layer (1, K) -> (1, M) bf16 in a CUDA graph over weight copies > 150 MB (no L2 reuse)."""
    nbytes = M * K * 2
    copies = max(2, -(-150_000_000 // nbytes))
    lins = [nn.Linear(K, M, bias=False, device=DEV, dtype=BF16) for _ in range(copies)]
    x = torch.randn(1, K, device=DEV, dtype=BF16)
    forms = [("stream+pdl", {}, True), ("cublas", {}, False)]
    if variants:
        forms += [("stream", {"SSM_PDL": "0"}, True)]
    row = dict(name=label, M=M, K=K, bytes=nbytes)
    with torch.no_grad():
        for form, env, ours in forms:
            set_env(env)
            fns = [(lambda lin=lin: ng.small_linear(lin, x)) if ours else (lambda lin=lin: lin(x)) for lin in lins]
            ms = bc.graph_time_ms(fns, reps=10)
            row[form + "_us"] = ms * 1e3
            row[form + "_frac_copy"] = nbytes / ms / 1e6 / copy_gbs
    set_env({})
    OUT["gemv"].append(row)
    print(f"  gemv {label:22s} {M}x{K}: " + ", ".join(
        f"{f} {row[f + '_us']:.1f} us ({row[f + '_frac_copy']:.0%})" for f, _, _ in forms), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--models", default="mamba2-130m,mamba-130m,mamba2-1.3b,mamba-1.4b")
    ap.add_argument("--skip", default="")
    a = ap.parse_args()
    path = os.path.join(a.out, "decode_e2e.json")
    skip = set(a.skip.split(","))
    OUT["device"] = torch.cuda.get_device_name()
    copy_gbs = bc.copy_bandwidth()
    OUT["copy_gbs"] = copy_gbs
    print(f"{OUT['device']}, copy {copy_gbs:.0f} GB/s", flush=True)
    models = {}
    for name in a.models.split(","):
        models[name] = model = bm.make_model(name)  # outside inference_mode: ordinary parameters
        for variant in ("default", "no_pdl"):
            e2e(model, name, variant)
            save(path)
    if "micro" not in skip:
        for label, M, K in [("1.3b in_proj", 8512, 2048), ("1.3b out_proj", 2048, 4096), ("1.3b lm_head", 50280, 2048),
                            ("130m in_proj", 3352, 768), ("130m lm_head", 50280, 768)]:
            gemv_case(label, M, K, copy_gbs, "gemv_variants" not in skip)
            save(path)
    with torch.inference_mode():  # the graph cache's tensors are inference tensors
        if "profile" not in skip:
            for name in ("mamba2-130m", "mamba2-1.3b", "mamba-130m"):
                if name in models:
                    guarded(per_token_ms)(models[name], 0)  # this variant's graph (the defaults)
                    profile_tokens(models[name], name)
                    save(path)
        if "variants" not in skip:
            # Mamba-1: the conv update folded into x_proj (norm_gemv mode 5; off since session 3)
            ng.CONV = True
            for name, model in models.items():
                if name.startswith("mamba-"):
                    e2e(model, name, "conv_xproj")
                    save(path)
            ng.CONV = False
    set_env({})


@guarded
def e2e(model, name, variant):
    set_env(VARIANTS[variant])
    ms = per_token_ms(model)
    target = bm.MODELS[name][3][2]
    OUT["e2e"].append(dict(model=name, variant=variant, ms=ms, target_ms=target))
    print(f"  {name:12s} decode b1 {ms:.3f} ms/token ({variant}; target {target})", flush=True)
    set_env({})


if __name__ == "__main__":
    main()
