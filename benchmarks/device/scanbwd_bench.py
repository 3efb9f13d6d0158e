"""Times the CUDA selective-scan backward in one process: fwd+bwd (event median and the profiler's
per-kernel device time) and the backward alone (event median) at issue 5's bench shape (B8 D4096
L2048 N16 bf16, z, D, dt_bias, softplus) and the mamba-130m layer shape (D 1536, channels-last delta
and z, B/C x_proj column slices), with two and four warps per 32 channels forced by
SSM_SCAN_BWD_WARPS ("default" = two; four after checking that its gradients match); then one fwd+bwd call
after an L2 flush on a host + device timeline (where the GPU waits on the host). Writes JSON after
each step (and the timeline's Chrome trace) next to --out.

    python3 benchmarks/device/scanbwd_bench.py --out scanbwd.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import ssm.ops as ops  # noqa: E402
from benchmarks.bench_cuda import _flush, time_ms  # noqa: E402
from benchmarks.bench_scan_layouts_cuda import kernels_by_time, scan_inputs  # noqa: E402
scan_mod = importlib.import_module("ssm.ops.selective_scan")  # the module (ssm.ops.selective_scan is the function)

VARIANTS = {"default": (True, "2"), "four": (True, "4")}


def set_variant(name):
    ck, warps = VARIANTS[name]
    scan_mod.FWD_CHECKPOINTS = ck
    os.environ["SSM_SCAN_BWD_WARPS"] = warps


def make_case(B=8, D=4096, L=2048, N=16, layout="contiguous"):
    inputs = scan_inputs(B, D, L, N, layout)
    leaves = [t.clone().requires_grad_() for t in inputs]
    dy = torch.randn(B, D, L, device="cuda", dtype=torch.bfloat16)

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        torch.autograd.backward(ops.selective_scan(*leaves[:7], leaves[7], True), dy)
    return leaves, dy, fwd_bwd


def grads(leaves, fwd_bwd):
    fwd_bwd()
    return [t.grad.clone() for t in leaves]


def check_four(leaves, fwd_bwd):
    """The four-warp kernel adds the per-step sums of four warps instead of two (another order): its
    gradients match the default's to float rounding (relative norm of the difference < 1e-3)."""
    set_variant("default")
    ref = grads(leaves, fwd_bwd)
    set_variant("four")
    got = grads(leaves, fwd_bwd)
    names = ["u", "delta", "A", "B", "C", "D", "z", "dt_bias"]
    errs = {n: float((g.float() - r.float()).norm() / r.float().norm()) for n, r, g in zip(names, ref, got)}
    bad = [n for n in names if not errs[n] < 1e-3]
    print(f"four vs default gradients: {'match' if not bad else 'DIFFER in ' + ','.join(bad)}; max rel "
          f"{max(errs.values()):.2e}", flush=True)
    return not bad


def time_variant(name, leaves, dy, fwd_bwd, rows, shape="bench"):
    set_variant(name)
    parts = kernels_by_time(fwd_bwd, iters=3)
    ms = time_ms(fwd_bwd, reps=10)
    y = ops.selective_scan(*leaves[:7], leaves[7], True)

    def bwd():
        for t in leaves:
            t.grad = None
        torch.autograd.backward(y, dy, retain_graph=True)
    bms = time_ms(bwd, reps=10)
    kms = sum(t for t, _ in parts)
    pair = sum(t for t, k in parts if "pair_bwd_kernel" in k)
    rows.append(dict(shape=shape, variant=name, event_ms=ms, kernels_ms=kms, bwd_event_ms=bms, pair_kernel_ms=pair, parts=parts[:8]))
    print(f"{shape:9s} {name:9s} fwd+bwd event {ms:6.3f} kernels {kms:6.3f} | bwd event {bms:6.3f} | pair {pair:6.3f} ms",
          flush=True)
    for t, k in parts[:3]:
        print(f"      {t:7.3f} ms  {k[:80]}", flush=True)


def timeline(fwd_bwd, out_dir):
    """One fwd+bwd after a flush, host and device: each GPU activity's launch (host, from the call's
    start), its device start (from the same origin), duration and the idle gap before it."""
    set_variant("default")
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(3):
            _flush()
            with torch.profiler.record_function("scanbwd_call"):
                fwd_bwd()
            torch.cuda.synchronize()
    path = os.path.join(out_dir, "timeline_trace.json")
    prof.export_chrome_trace(path)
    with open(path) as f:
        ev = json.load(f)["traceEvents"]
    calls = sorted((e for e in ev if e.get("name") == "scanbwd_call" and e.get("cat") == "user_annotation"),
                   key=lambda e: e["ts"])
    t0 = calls[-1]["ts"]
    launch = {e["args"]["correlation"]: e for e in ev if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})}
    gpu = sorted((e for e in ev if e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy") and e["ts"] >= t0 - 2000),
                 key=lambda e: e["ts"])
    lines, prev_end = [], None
    for e in gpu:
        le = launch.get(e.get("args", {}).get("correlation"))
        host = (le["ts"] - t0) if le else float("nan")
        gap = (e["ts"] - prev_end) if prev_end is not None else float("nan")
        prev_end = e["ts"] + e.get("dur", 0)
        lines.append(f"  launch {host:8.1f} us  start {e['ts'] - t0:8.1f}  dur {e.get('dur', 0):8.1f}  gap {gap:7.1f}"
                     f"  {e['name'][:60]}")
    last = float("nan") if prev_end is None else prev_end - t0
    lines.append(f"  host call returns at {calls[-1]['dur']:.1f} us; last GPU activity ends at {last:.1f}")
    print("timeline (last call; us from the call's start):", flush=True)
    print("\n".join(lines), flush=True)
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="scanbwd.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), flush=True)
    leaves, dy, fwd_bwd = make_case()
    res = dict(device=torch.cuda.get_device_name(), rows=[])

    def save():
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    # most wanted first, saved after each step (the round's time limit may cut the rest)
    res["four_matches"] = check_four(leaves, fwd_bwd)
    for name in ("default", "four"):
        time_variant(name, leaves, dy, fwd_bwd, res["rows"])
        save()
    mleaves, mdy, mfwd_bwd = make_case(D=1536, layout="channels_last")
    for name in ("default", "four"):
        time_variant(name, mleaves, mdy, mfwd_bwd, res["rows"], shape="mamba130m")
        save()
    res["timeline"] = timeline(fwd_bwd, os.path.dirname(os.path.abspath(args.out)))
    set_variant("default")
    save()


if __name__ == "__main__":
    main()
