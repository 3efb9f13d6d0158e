"""Device-round timings of engineer decodebig (session 10): batch-1 decode of the large models, in one process
(no pytest, so no NaN poisoning). Per model (mamba2-1.3b, mamba-1.4b):
1. decode latency per token with cg=True (bench_models_cuda's method, medians of --reps);
2. the per-layer account: one graph-replayed token's kernels (decode_e2e.profile_tokens), each kernel kind's
   count, mean duration, mean advance of the token's end (dEnd), its bytes and the bandwidth that dEnd means
   (% of copy), and one middle layer's timeline (start after the previous kernel's end: negative = overlap);
3. the same token under each GEMV variant of --variants (SSM_GEMV_RING=stages[:blocks an SM]);
first the b64 decode per step of --b64's models, last --e2e-variants. Items started past
--deadline seconds are skipped; the JSON is rewritten after each.

    python3 benchmarks/device/decodebig_bench.py OUT_DIR [--models a,b] [--variants ring3_1,...] [--deadline s]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
import bench_cuda as bc  # noqa: E402
import bench_models_cuda as bm  # noqa: E402
import decode_e2e as de  # noqa: E402

START = time.time()
RINGS = {"ring3_1": "3:1", "ring4_1": "4:1", "ring3": "3", "ring2_2": "2:2", "reg": "0"}  # reg: registers everywhere
de.SWITCHES = de.SWITCHES + ("SSM_GEMV_RING",)
de.VARIANTS.update({k: {"SSM_GEMV_RING": v} for k, v in RINGS.items()})


def late(deadline, what):
    if time.time() - START > deadline:
        print(f"  skipped (deadline {deadline} s): {what}", flush=True)
        return True
    return False


def layer_bytes(model):
    """kernel-name prefix -> bytes one call moves (weights once; a state step's states read and written)."""
    mixer = model.backbone.layers[0].mixer
    w = lambda lin: lin.weight.numel() * lin.weight.element_size()  # noqa: E731
    states = sum(t.numel() * t.element_size() for t in mixer.allocate_inference_cache(1, 1))
    head = {"lm_head": model.lm_head.weight.numel() * model.lm_head.weight.element_size()}
    if hasattr(mixer, "x_proj"):  # Mamba-1: in_proj + conv, x_proj, the state step with dt_proj, out_proj
        return {"norm_gemv_stream_kernel<bf16, 3, 1, true": w(mixer.in_proj) + 2 * states,
                "x_proj": w(mixer.x_proj), "out_proj": w(mixer.out_proj),
                "m1_decode_step": w(mixer.dt_proj) + 2 * states + mixer.A_log.numel() * 4, **head}
    return {"norm_gemv_stream_kernel<bf16, 3": w(mixer.in_proj), "conv_state_step": 2 * states,
            "norm_gemv_stream_kernel<bf16, 1": w(mixer.out_proj), **head}


def account(key, nbytes, copy_gbs):
    """From one token's timeline: each kernel kind's count, mean duration and dEnd (the last GEMV is lm_head; Mamba-1's
    plain GEMVs named x_proj / out_proj by position),
    its bytes and the bandwidth its dEnd means; one middle layer's kernels (start and end after the previous
    kernel's end). Printed and stored in the profile's entry."""
    prof = de.OUT["profile"].get(key)
    if not prof:
        return
    tl = prof["timeline"]
    last_gemv = max(i for i, k in enumerate(tl) if k[0].startswith("norm_gemv"))
    kinds, end, layer = {}, tl[0][1], []
    for i, (k, s, d) in enumerate(tl):
        name = "lm_head" if i == last_gemv else k
        if k.startswith("norm_gemv_stream_kernel<bf16, 0"):  # Mamba-1's plain GEMVs: x_proj after in_proj, out_proj
            name = "out_proj" if tl[i - 1][0].startswith("m1_decode_step") else "x_proj"
        row = kinds.setdefault(name, dict(name=name, count=0, dur_us=0.0, dend_us=0.0))
        row["count"] += 1
        row["dur_us"] += d
        row["dend_us"] += max(0.0, s + d - end)
        if len(tl) // 2 <= i < len(tl) // 2 + 8:
            layer.append(dict(name=k, start=round(s - end, 2), end=round(s + d - end, 2)))
        end = max(end, s + d)
    rows = sorted(kinds.values(), key=lambda r: -r["dend_us"])
    for r in rows:
        r["dur_us"] /= r["count"]
        r["dend_us"] /= r["count"]
        b = next((v for k, v in nbytes.items() if r["name"].startswith(k)), None)
        if b is not None and r["dend_us"] > 0:
            r["bytes"], r["gbs"] = b, b / r["dend_us"] / 1e3
            r["pct_copy"] = 100 * r["gbs"] / copy_gbs
    prof["account"], prof["middle_layer"] = rows, layer
    for r in rows[:6]:
        extra = f" {r['bytes'] / 1e6:7.2f} MB {r['gbs']:5.0f} GB/s ({r['pct_copy']:3.0f}%)" if "bytes" in r else ""
        print(f"     {r['count']:3d} x dEnd {r['dend_us']:6.2f} dur {r['dur_us']:6.2f} us{extra}  {r['name'][:44]}",
              flush=True)
    print("     layer (start/end after the previous end): " + " | ".join(
        f"{r['name'][24:40] if r['name'].startswith('norm_gemv') else r['name'][:16]} {r['start']:+.1f}/{r['end']:+.1f}"
        for r in layer[:6]), flush=True)


def run_model(name, variants, reps, copy_gbs, deadline, path):
    if late(deadline, name):
        return
    model = bm.make_model(name)
    nbytes = layer_bytes(model)
    de.REPS[0] = reps
    de.e2e(model, name, "default")
    with torch.inference_mode():
        de.guarded(de.per_token_ms)(model, 0)
        de.profile_tokens(model, name)
        account(name, nbytes, copy_gbs)
        de.save(path)
        for v in [v for v in variants if name.startswith(de.ONLY.get(v, ""))]:
            if late(deadline, f"{name}/{v}"):
                break
            with de.variant_set(v):
                de.guarded(de.per_token_ms)(model, 0)
                de.profile_tokens(model, f"{name}/{v}")
            account(f"{name}/{v}", nbytes, copy_gbs)
            de.save(path)
    del model
    torch.cuda.empty_cache()


def run_b64(spec, deadline, path):
    name = spec
    if late(deadline, spec):
        return
    model = bm.make_model(name)
    ms = bm.decode_ms_per_token(model, 64)
    de.OUT.setdefault("b64", []).append(dict(model=spec, ms=ms, target_ms=bm.MODELS[name][3][3]))
    print(f"  {spec:22s} decode b64 {ms:.3f} ms/step (target {bm.MODELS[name][3][3]})", flush=True)
    de.save(path)
    del model
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--models", default="mamba2-1.3b,mamba-1.4b")
    ap.add_argument("--variants", default="ring3_1,ring4_1,ring3")
    ap.add_argument("--b64", default="")
    ap.add_argument("--e2e-variants", default="ring3_1", help="variants also timed end to end, after the rest")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--deadline", type=float, default=1e9)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "decodebig.json")
    copy_gbs = bc.copy_bandwidth()
    de.OUT.update(device=torch.cuda.get_device_name(), copy_gbs=copy_gbs)
    print(f"{de.OUT['device']}, copy {copy_gbs:.0f} GB/s", flush=True)
    variants = [v for v in a.variants.split(",") if v]
    for spec in [s for s in a.b64.split(",") if s]:
        de.guarded(run_b64)(spec, a.deadline, path)
    for name in [m for m in a.models.split(",") if m]:
        run_model(name, variants, a.reps, copy_gbs, a.deadline, path)
    for v in [v for v in a.e2e_variants.split(",") if v]:
        for name in [m for m in a.models.split(",") if m]:
            if not late(a.deadline, f"e2e {name}/{v}"):
                model = bm.make_model(name)
                de.e2e(model, name, v)
                de.save(path)
                del model
                torch.cuda.empty_cache()
    print(f"done at {time.time() - START:.1f} s", flush=True)


if __name__ == "__main__":
    main()
