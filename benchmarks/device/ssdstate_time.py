"""Device round of the SSD state kernels (ssdstate, session 9), timing part: one Python process, after the tests (run
by ssdstate.sh in another process: their conftest poisons kernel outputs with NaN).

    python benchmarks/device/ssdstate_time.py OUT_DIR

At issue 6's shapes (bf16; D, dt_bias, softplus; chunk 256): the forward's and the fwd+bwd call's kernel sums
(profiler) and eager times per form (session 9's state kernels, and session 8's by their switches), with the
per-kernel times of the kernels this engineer owns.
"""
from __future__ import annotations

import json
import os
import sys

import torch

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

SWITCHES = ("SSM_SSD_BWD_DSTATE_HEADS", "SSM_SSD_BWD_THROUGH", "SSM_SSD_STATE_XROWS", "SSM_SSD_STATE_PREFETCH",
            "SSM_SSD_STATE_8WARPS")
FORMS = {"new": {}, "s8": {k: "0" for k in SWITCHES[:4]}, "w8": {"SSM_SSD_STATE_8WARPS": "1"}}
MINE = ("chunk_state", "chunk_tokens", "state_passing", "dstate", "bwd_state", "finalize", "copy", "elementwise")


def kernel_table(fn, iters=3):
    """Per-call device time of each kernel fn launches (profiler), in us, largest first."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = {e.key: e.self_device_time_total / iters for e in prof.key_averages()
            if e.self_device_time_total > 0 and e.device_type == torch.autograd.DeviceType.CUDA}
    return dict(sorted(rows.items(), key=lambda kv: -kv[1]))


def short(name):
    return name.replace("void ssm::cuda::ssd::", "").split("(ssm::")[0][:70]


def case(B, L, form, part):
    from bench_cuda import time_ms
    from bench_ssd_cuda import fwd_bwd_fn, fwd_fn, inputs
    import ssm.ops._kernels as kernels
    for k in SWITCHES:
        os.environ.pop(k, None)
    os.environ.update(FORMS[form])
    t = inputs(B, L)
    fn = fwd_fn(t) if part == "fwd" else fwd_bwd_fn(t)
    table = kernel_table(fn)
    mine = {short(k): round(v, 1) for k, v in table.items() if any(m in k for m in MINE)}
    row = dict(case=f"B{B} L{L}", part=part, form=form, poison=kernels.POISON_OUTPUTS,
               kernels_ms=round(sum(table.values()) / 1e3, 4), eager_ms=round(time_ms(fn, reps=10), 4), mine_us=mine)
    print(json.dumps({k: v for k, v in row.items() if k != "mine_us"}), flush=True)
    for k, v in mine.items():
        print(f"   {v:8.1f} us  {k}", flush=True)
    return row


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    res = dict(device=torch.cuda.get_device_name(), rows=[])
    print(res["device"], flush=True)
    parts = [(8, 2048, "new", "fwdbwd"), (8, 2048, "s8", "fwdbwd"), (1, 8192, "new", "fwdbwd"),
             (1, 8192, "s8", "fwdbwd"), (8, 2048, "new", "fwd"), (8, 2048, "s8", "fwd"), (8, 2048, "w8", "fwd"),
             (8, 2048, "w8", "fwdbwd"), (1, 8192, "new", "fwd"), (1, 8192, "s8", "fwd")]
    for B, L, form, part in parts:
        try:
            res["rows"].append(case(B, L, form, part))
        except Exception as e:  # a part's failure leaves the others
            print(f"-- B{B} L{L} {form} {part} failed: {type(e).__name__}: {e}", flush=True)
        with open(os.path.join(out_dir, "time.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
