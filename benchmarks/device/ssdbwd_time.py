"""Device round of the dedicated CUDA SSD backward (ssdbwd, sessions 9-10), timing part: one Python process, after
the tests (run by ssdbwd.sh in another process: their conftest poisons kernel outputs with NaN).

    python benchmarks/device/ssdbwd_time.py OUT_DIR [B:FORM,B:FORM,...]   (forms: FORMS below)

fwd+bwd at issue 6's shapes (bf16; D, dt_bias, softplus; chunk 256) per backward form: the profiler's kernel sum and
top kernels, the eager wall time (CUDA events, L2 flushed), the host time per call.
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

FORMS = {  # name: environment
    "default": {},
    "sets8": {"SSM_SSD_BWD_HEADSUM": "8"},  # 8 head sets per group (B8: dc2 / db2 at 2048 blocks, not 1024)
    "sets16": {"SSM_SSD_BWD_HEADSUM": "16"},  # 16 (B1 L8192: 2048 blocks, not 1024)
    "nosplit": {"SSM_SSD_BWD_SPLIT": "0"},
}
SWITCHES = ("SSM_SSD_BWD_SPLIT", "SSM_SSD_BWD_HEADSUM")


def kernel_table(fn, iters=3):
    """Per-call device time of each kernel fn launches (profiler), in us, largest first."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = {e.key[:60]: e.self_device_time_total / iters for e in prof.key_averages()
            if e.self_device_time_total > 0 and e.device_type == torch.autograd.DeviceType.CUDA}
    return dict(sorted(rows.items(), key=lambda kv: -kv[1]))


def host_ms(fn, reps=10):
    """Host milliseconds per call without synchronizing (the GPU queue absorbs the launches)."""
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    host = (time.perf_counter() - t) / reps * 1e3
    torch.cuda.synchronize()
    return host


def case(B, L, name, env, N=128):
    from bench_cuda import time_ms
    from bench_ssd_cuda import fwd_bwd_fn, inputs
    import ssm.ops._kernels as kernels
    for k in SWITCHES:
        os.environ.pop(k, None)
    os.environ.update(env)
    t = inputs(B, L, N=N)
    fb = fwd_bwd_fn(t)
    table = kernel_table(fb)
    row = dict(case=f"B{B} L{L}" + ("" if N == 128 else f" N{N}"), form=name, poison=kernels.POISON_OUTPUTS, kernels_ms=sum(table.values()) / 1e3,
               eager_ms=time_ms(fb, reps=10), host_ms=host_ms(fb), top_us={k: round(v, 1) for k, v in table.items()})
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "top_us"}),
          flush=True)
    for k, v in list(table.items())[:6]:
        print(f"   {v:8.1f} us  {k}", flush=True)
    return row


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    res = dict(device=torch.cuda.get_device_name(), rows=[])
    print(res["device"], flush=True)
    parts = [(8, 2048, "default"), (1, 8192, "default"), (8, 2048, "default", 64),  # N 64: dc / db a block per slice
             (8, 2048, "nosplit"), (8, 2048, "default")]
    if len(sys.argv) > 2:  # B:FORM,B:FORM,... (L 2048 at B8, else 8192)
        parts = [(int(b), 2048 if b == "8" else 8192, n) for b, n in (x.split(":") for x in sys.argv[2].split(","))]
    for B, L, name, *N in parts:
        try:
            res["rows"].append(case(B, L, name, FORMS[name], *N))
        except Exception as e:  # a part's failure leaves the others
            print(f"-- B{B} L{L} {name} failed: {type(e).__name__}: {e}", flush=True)
        with open(os.path.join(out_dir, "time.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
