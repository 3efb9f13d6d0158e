"""Device-round timings of batch-1 decoding (issues 5 and 6), in one process (no pytest, so no NaN
poisoning of kernel outputs):
1. decode latency per token with cg=True for the four model shapes (bench_models_cuda's method),
   with the defaults and each variant of VARIANTS (environment switches read per launch);
   (the defaults and the timeline of each model first, then the variants);
2. a timeline of one graph-replayed token per model (torch.profiler over the replays): every
   kernel's start and duration; per kernel name its count, mean duration and mean critical-path
   share (how far the token's end-to-end time advanced while it was the last kernel to finish).
Writes OUT/decode_e2e.json after every item (a timeout keeps what finished).

    python3 benchmarks/device/decode_e2e.py --out OUT_DIR [--models a,b] [--variants a,b] [--profile a,b]
        [--profile-variants a,b] [--reps n]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import time
from collections import defaultdict

import torch

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import bench_cuda as bc  # noqa: E402
import bench_models_cuda as bm  # noqa: E402
from ssm.ops import norm_gemv as ng  # noqa: E402

DEV = bc.DEV
OUT: dict = {"e2e": [], "profile": {}}
VARIANTS = {"default": {}, "no_pdl": {"SSM_PDL": "0"},
            "m1_conv_kernel": {},
            "scalar_prologue": {"SSM_GEMV_VEC": "0"}, "prefetch_own": {"SSM_GEMV_PREFETCH_OWN": "1"}}
SWITCHES = ("SSM_PDL", "SSM_GEMV_VEC", "SSM_GEMV_PREFETCH_OWN")
# variants that set a module attribute: name -> [(module, attribute, value)].
# m1_conv_kernel: the Mamba-1 conv update in its own kernel again (not in in_proj's).
FLAGS = {"m1_conv_kernel": [(ng, "CONV_EPILOGUE", False)]}
ONLY = {"m1_conv_kernel": "mamba-", "prefetch_own": ("mamba2-130m", "mamba2-1.3b", "mamba-1.4b")}


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
    for k in SWITCHES:
        os.environ.pop(k, None)
    os.environ.update(env)


def gen_s(model, ids, new):
    torch.cuda.synchronize()
    t = time.perf_counter()
    model.generate(ids, max_length=bm.PROMPT + new, cg=True)
    torch.cuda.synchronize()
    return time.perf_counter() - t


REPS = [3]


def per_token_ms(model, reps=None):
    """(t(128 new) - t(1 new)) / 127, cg=True, batch 1; a fresh graph (the variant's kernels).
    reps=0: only capture the graph."""
    reps = REPS[0] if reps is None else reps
    model._decoding_cache = None
    ids = torch.randint(0, bm.VOCAB, (1, bm.PROMPT), device=DEV)
    gen_s(model, ids, bm.NEW if reps else 2)
    if reps == 0:
        return None
    gen_s(model, ids, 1)
    long = statistics.median(gen_s(model, ids, bm.NEW) for _ in range(reps))
    short = statistics.median(gen_s(model, ids, 1) for _ in range(reps))
    return (long - short) / (bm.NEW - 1) * 1e3


@contextlib.contextmanager
def variant_set(variant):
    """The variant's environment switches and module attributes, restored on exit."""
    set_env(VARIANTS[variant])
    flags = FLAGS.get(variant, [])
    before = [getattr(mod, attr) for mod, attr, _ in flags]
    for mod, attr, value in flags:
        setattr(mod, attr, value)
    try:
        yield
    finally:
        for (mod, attr, _), value in zip(flags, before):
            setattr(mod, attr, value)
        set_env({})


@guarded
def e2e(model, name, variant):
    with variant_set(variant):
        ms = per_token_ms(model)
    target = bm.MODELS[name][3][2]
    OUT["e2e"].append(dict(model=name, variant=variant, ms=ms, target_ms=target))
    print(f"  {name:12s} decode b1 {ms:.3f} ms/token ({variant}; target {target})", flush=True)


def short_name(name: str) -> str:
    """A kernel's name without namespaces and argument lists, its template arguments kept short."""
    name = re.sub(r"\([^()]*\)$", "", name)
    name = re.sub(r"(void )?(ssm::cuda::)?(\(anonymous namespace\)::)?", "", name)
    name = name.replace("__nv_bfloat16", "bf16").replace("at::native::", "").replace("(anonymous namespace)::", "")
    return name[:80]


def token_kernels(n: int):
    """(name, start us, duration us) of every kernel of n graph replays, by start time."""
    ks = []
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            RUN[0]()
        torch.cuda.synchronize()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start:
            ks.append((short_name(e.name), e.time_range.start, e.time_range.end - e.time_range.start))
    return sorted(ks, key=lambda k: k[1])


RUN = [None]


@guarded
def profile_tokens(model, name, n=3):
    """One token's kernels (the middle of n replays): the timeline and a per-name summary."""
    cache = model._decoding_cache
    ids = torch.randint(0, bm.VOCAB, (1, 1), device=DEV)
    pos = torch.full_like(ids, bm.PROMPT)
    RUN[0] = lambda: cache.run(ids, pos, bm.PROMPT)
    RUN[0]()
    torch.cuda.synchronize()
    ks = token_kernels(n)
    per = len(ks) // n
    tok = ks[per:2 * per]
    t0 = tok[0][1]
    summary = defaultdict(lambda: [0, 0.0, 0.0])  # name -> count, duration, critical-path share
    end = t0
    for k, start, dur in tok:
        share = max(0.0, start + dur - max(end, start)) if start + dur > end else 0.0
        end = max(end, start + dur)
        s = summary[k]
        s[0] += 1
        s[1] += dur
        s[2] += share
    span = end - t0
    rows = sorted(summary.items(), key=lambda kv: -kv[1][2])
    OUT["profile"][name] = dict(
        kernels_per_token=per, span_us=span, busy_us=sum(d for _, _, d in tok),
        summary=[dict(name=k, count=c, mean_us=d / c, path_us=p) for k, (c, d, p) in rows],
        timeline=[(k[:48], round(s - t0, 2), round(d, 2)) for k, s, d in tok])
    print(f"  profile {name}: {per} kernels/token, span {span:.0f} us, kernel time {OUT['profile'][name]['busy_us']:.0f} us")
    for k, (c, d, p) in rows[:9]:
        print(f"     {c:3d} x {d / c:6.2f} us (path {p:7.1f} us)  {k[:72]}")
    # two middle layers, in order: start relative to the first, duration
    mid = next((i for i in range(per // 2, per) if ", 3, " in tok[i][0]), per // 2)
    print("     layers: " + " | ".join(f"{k[:26]} @{s - tok[mid][1]:.1f} +{d:.1f}" for k, s, d in tok[mid:mid + 10]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--models", default="mamba2-1.3b,mamba-1.4b,mamba2-130m,mamba-130m")
    ap.add_argument("--variants", default="prefetch_own,m1_conv_kernel")
    ap.add_argument("--reps", type=int, default=3, help="medians of this many generations")
    ap.add_argument("--profile", default="mamba2-130m,mamba-130m", help="models whose token is profiled")
    ap.add_argument("--profile-variants", default="prefetch_own,m1_conv_kernel",
                    help="variants whose token is profiled too (models they apply to; variant@prefix: models named so)")
    a = ap.parse_args()
    REPS[0] = a.reps
    path = os.path.join(a.out, "decode_e2e.json")
    OUT["device"] = torch.cuda.get_device_name()
    OUT["copy_gbs"] = bc.copy_bandwidth()
    print(f"{OUT['device']}, copy {OUT['copy_gbs']:.0f} GB/s", flush=True)
    models = {}
    for name in a.models.split(","):  # the defaults and one token's kernels first, then the variants
        models[name] = model = bm.make_model(name)  # outside inference_mode: ordinary parameters
        e2e(model, name, "default")
        if name in a.profile.split(","):
            with torch.inference_mode():  # the graph cache's tensors are inference tensors
                guarded(per_token_ms)(model, 0)  # a graph of the defaults
                profile_tokens(model, name)
                for item in a.profile_variants.split(","):  # one token's kernels under a variant too
                    variant, _, only = item.partition("@")  # variant@prefix: only for models named so
                    if variant and name.startswith(ONLY.get(variant, "")) and name.startswith(only):
                        with variant_set(variant):
                            guarded(per_token_ms)(model, 0)
                            profile_tokens(model, name + "/" + variant)
                guarded(per_token_ms)(model, 0)  # the defaults' graph again
        save(path)
    for variant in a.variants.split(","):  # in the order given, each on the models it applies to
        for name, model in models.items():
            if variant not in ("", "default") and name.startswith(ONLY.get(variant, "")):
                e2e(model, name, variant)
                save(path)
    set_env({})


if __name__ == "__main__":
    main()
