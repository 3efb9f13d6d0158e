"""Device-round timing of the SSD forward (issue 6): profiler kernel sums and eager event times at
(B8, L2048) and (B1, L8192) (H32 P64 N128 chunk 256 bf16, D, dt_bias, softplus), optionally the
Mamba2 layer forward at the mamba2-130m shape (H24, B8 L2048; the fused split path's strided views), then
B8 and B1 under the kernel switches of VARIANTS (the layer with --layer), then B1 without the eager plan
(--checked; ssd._plans: every call checked); host_ms is the host time per call without synchronisation; last,
B1 timed as bench_ssd_cuda times it (eager first; graph replay for gpu).

    python benchmarks/device/ssdfwd_time.py [OUT.json] [--layer] [--checked]
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import ssm.ops as ops  # noqa: E402
from bench_cuda import graph_time_ms, time_ms  # noqa: E402
from bench_ssd_cuda import fwd_fn, inputs  # noqa: E402
from ssm.modules import Mamba2  # noqa: E402
from ssm.ops import ssd  # noqa: E402


def kernels(fn, iters=3):
    """Per-call device time of each kernel fn launches (profiler), and their sum, in ms."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = {e.key[:90]: e.self_device_time_total / iters / 1e3 for e in prof.key_averages()
            if e.self_device_time_total > 0 and e.device_type == torch.autograd.DeviceType.CUDA}
    return sum(rows.values()), dict(sorted(rows.items(), key=lambda kv: -kv[1])[:6])


def host_ms(fn, n=20):
    """Host time per call (no synchronisation inside the loop), in ms."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e3


def op_case(B, L):
    fwd = fwd_fn(inputs(B, L))
    total, table = kernels(fwd)
    return dict(case=f"ssd fwd B{B} L{L}", gpu_ms=total, eager_ms=time_ms(fwd, reps=10), host_ms=host_ms(fwd),
                kernels=table)


def checked_case(B):
    """The forward without its eager plan (every call checked, through the custom op's layers)."""
    find, ssd._plans.find = ssd._plans.find, lambda *a: (None, None)
    try:
        row = op_case(B, 2048 if B == 8 else 8192)
    finally:
        ssd._plans.find = find
    row["case"] += " without the eager plan"
    return row


def bench_case(B):
    """bench_ssd_cuda's eager and graph figures (its order: eager first, no profiler before), fresh inputs."""
    fwd = fwd_fn(inputs(B, 2048 if B == 8 else 8192))
    eager = time_ms(fwd)
    return dict(case=f"bench_ssd_cuda order B{B}", gpu_ms=graph_time_ms([fwd]), eager_ms=eager, kernels={})


def layer_case():
    layer = Mamba2(768, d_state=128, headdim=64, chunk_size=256, device="cuda", dtype=torch.bfloat16)
    u = torch.randn(8, 2048, 768, device="cuda", dtype=torch.bfloat16)

    def fwd():
        with torch.inference_mode():
            layer(u)
    total, table = kernels(fwd)
    return dict(case="Mamba2 layer fwd H24 B8 L2048", gpu_ms=total, eager_ms=time_ms(fwd, reps=10), kernels=table)


# Kernel variants timed after the defaults (the switches are read at each launch): H_in as hi + lo.
STAGED = {"SSM_SSD_FWD_HIN_SPLIT": "1"}
VARIANTS = [(8, STAGED), (1, STAGED)]  # (B 0: the Mamba2 layer, with --layer)


def variant_case(B, env):
    os.environ.update(env)
    row = op_case(B, 2048 if B == 8 else 8192) if B else layer_case()
    for k in env:
        del os.environ[k]
    row["case"] += " " + " ".join(f"{k}={v}" for k, v in env.items())
    return row


def main(out=None, layer=False):
    ops._kernels.POISON_OUTPUTS = False  # the test harness poisons kernel outputs (NaN fills); not here
    rows = []
    cases = [lambda: op_case(8, 2048), lambda: op_case(1, 8192)] + ([layer_case] if layer else [])
    cases += [lambda B=B, env=env: variant_case(B, env) for B, env in VARIANTS]
    cases += [lambda: checked_case(1)] if "--checked" in sys.argv else []
    for fn in cases:
        row = fn()
        rows.append(row)
        print(f"{row['case']}: gpu {row['gpu_ms']:.3f} ms, eager {row['eager_ms']:.3f} ms, host "
              f"{row.get('host_ms', 0):.3f} ms", flush=True)
        for k, v in row["kernels"].items():
            print(f"    {v:8.4f} ms  {k}", flush=True)
        if out:
            with open(out, "w") as f:
                json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else None, "--layer" in sys.argv)
