"""Device-round timings of the decode work (issue 5's small-kernel targets), the bench_cuda way:
state steps in a CUDA graph over rotating buffers larger than L2 (lean kernel on and off, same
process), the conv fwd+bwd with events (back-to-back calls) and the profiler's kernel time, and
where the conv's host time goes (host time per call, kernels per call, a short cProfile).

    python3 benchmarks/device/decode_bench.py --out OUT_DIR
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import bench_cuda as bc  # noqa: E402

import ssm.ops as ops  # noqa: E402
from ssm.ops import conv as conv_mod  # noqa: E402

DEV, BF16 = bc.DEV, bc.BF16


def steps(copy_gbs, variants):
    cases = [("state step Mamba-1 b64", 64, 5120, 1, 16, True, 0.010),
             ("state step Mamba-2 b1", 1, 80, 64, 128, False, 0.003),
             ("state step Mamba-2 b64", 64, 80, 64, 128, False, 0.070)]
    for lean in variants:
        os.environ["SSM_STEP_LEAN"] = lean
        for case in cases:
            bc.step_case(f"{case[0]} lean={lean}", *case[1:6], copy_gbs, case[6])
    os.environ.pop("SSM_STEP_LEAN")


def conv(copy_gbs, out_dir):
    B, D, L, W = 8, 4096, 2048, 4
    x = torch.randn(B, D, L, device=DEV, dtype=BF16)
    xg = x.clone().requires_grad_()
    wg = (torch.randn(D, W, device=DEV) * 0.5).requires_grad_()
    bg = torch.randn(D, device=DEV).requires_grad_()
    dy = torch.randn_like(x)

    def fwd_bwd():
        xg.grad = wg.grad = bg.grad = None
        y = ops.dw_causal_conv(xg, wg, bg, "silu")
        torch.autograd.backward(y, dy)

    def fwd_only():
        return ops.dw_causal_conv(xg, wg, bg, "silu")
    ms = bc.time_ms(fwd_bwd, inner=5)
    bc.record("conv fwd+bwd", f"B{B} D{D} L{L} W{W} bf16 silu", ms, 5 * bc.nbytes(x), copy_gbs, None, 0.260,
              kms=bc.kernel_ms(fwd_bwd))
    # the same through the general autograd path (no plan), for the host-time comparison
    planned = conv_mod._make_grad_plan
    conv_mod._make_grad_plan, conv_mod._fwd_plans = (lambda *a: False), {}
    ms = bc.time_ms(fwd_bwd, inner=5)
    bc.record("conv fwd+bwd, general path", f"B{B} D{D} L{L} W{W} bf16 silu", ms, 5 * bc.nbytes(x), copy_gbs, None,
              0.260)
    conv_mod._make_grad_plan, conv_mod._fwd_plans = planned, {}
    # host time per call (nothing waits on the GPU inside the loop: the queue stays far from full)
    for name, fn in (("fwd+bwd", fwd_bwd), ("fwd with autograd", fwd_only)):
        fn(), fn()  # the first call of a signature makes its plan
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            fn()
        host = (time.perf_counter() - t) / 10
        torch.cuda.synchronize()
        print(f"  conv host time per call, {name}: {host * 1e6:.1f} us", flush=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fwd_bwd()
        torch.cuda.synchronize()
    for e in prof.key_averages():
        if e.self_device_time_total > 0:
            print(f"  kernel {e.key[:70]:70s} x{e.count / 3:.0f} {e.self_device_time_total / e.count:8.1f} us", flush=True)
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(20):
        fwd_bwd()
    pr.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(30)
    with open(os.path.join(out_dir, "conv_cprofile.txt"), "w") as f:
        f.write(s.getvalue())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--only", default="step,conv")
    args = ap.parse_args()
    copy_gbs = bc.copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}: copy {copy_gbs:.0f} GB/s", flush=True)
    # the new forms first, the baselines last (a time cap then cuts the least needed figures)
    if "step" in args.only:
        steps(copy_gbs, ("1",))
    if "conv" in args.only:
        conv(copy_gbs, args.out)
    if "step" in args.only:
        steps(copy_gbs, ("0",))
    with open(os.path.join(args.out, "decode_bench.json"), "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), copy_gbs=copy_gbs, results=bc.RESULTS), f, indent=1)


if __name__ == "__main__":
    main()
