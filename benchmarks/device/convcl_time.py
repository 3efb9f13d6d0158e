"""Device-round timing of the channels-last causal conv (issues 5, 6): conv fwd and fwd+bwd on the
xBC slice of zxbcdt at the mamba2-130m and mamba2-1.3b shapes (B8 L2048, C 1792 / 4352, W4, silu,
bias, bf16), channels-last kernels vs the old copy + L-contiguous conv; then one Mamba2 layer
(130m shape) fwd and fwd+bwd with conv.CHANNELS_LAST_DEVICES ("cuda",) and ().

    python benchmarks/device/convcl_time.py OUT.json [--no-layer]
"""
from __future__ import annotations

import json
import sys
import os

import torch

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from bench_cuda import time_ms  # noqa: E402
from ssm.ops import conv  # noqa: E402


def kernels(fn, iters=3):
    """Per-call device time of each kernel fn launches (profiler) and their sum, in us."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = {e.key[:70]: e.self_device_time_total / iters for e in prof.key_averages()
            if e.self_device_time_total > 0 and e.device_type == torch.autograd.DeviceType.CUDA}
    return sum(rows.values()), dict(sorted(rows.items(), key=lambda kv: -kv[1])[:5])


def conv_fns(dim, C, B=8, L=2048):
    """(name, fn) of the four ways: fwd / fwd+bwd, new (views) and old (copies as ssd_split made)."""
    T = 2 * dim + C - dim + dim // 64
    buf = torch.randn(B, L, T, device="cuda", dtype=torch.bfloat16)
    x = buf[..., dim:dim + C].transpose(1, 2)
    dyL = torch.randn(B, L, C, device="cuda", dtype=torch.bfloat16)
    w, b = torch.randn(C, 4, device="cuda") * 0.5, torch.randn(C, device="cuda")
    e = x.new_empty(0)

    def fwd_new():
        return conv._fwd_op(x, w, b, None, None, True, False)[0].transpose(1, 2)

    def fwd_old():
        return conv._fwd_op(x.contiguous(), w, b, None, None, True, False)[0].transpose(1, 2)

    def both_new():
        fwd_new()
        dx = conv._bwd_op(x, w, b, None, None, dyL.transpose(1, 2), e, True, False)[0]
        return dx.transpose(1, 2).contiguous()

    def both_old():
        fwd_old()
        dx = conv._bwd_op(x.contiguous(), w, b, None, None, dyL.transpose(1, 2).contiguous(), e, True, False)[0]
        return dx.transpose(1, 2).contiguous()
    y_new, y_old = fwd_new(), fwd_old()
    d_new, d_old = both_new(), both_old()
    err = max((y_new.float() - y_old.float()).abs().max().item(), (d_new.float() - d_old.float()).abs().max().item())
    return err, dict(fwd_cl=fwd_new, fwd_copy=fwd_old, fwdbwd_cl=both_new, fwdbwd_copy=both_old)


def layer_fns():
    from ssm.modules import Mamba2
    layer = Mamba2(768, d_state=128, headdim=64, chunk_size=256, device="cuda", dtype=torch.bfloat16)
    u = torch.randn(8, 2048, 768, device="cuda", dtype=torch.bfloat16)
    ur = u.clone().requires_grad_()
    g = torch.randn_like(u)

    def fwd():
        with torch.inference_mode():
            layer(u)

    def fwdbwd():
        layer(ur).backward(g)
    return dict(layer_fwd=fwd, layer_fwdbwd=fwdbwd)


def main():
    rows = []
    for name, dim, C in (("130m", 1536, 1792), ("1.3b", 4096, 4352)):
        err, fns = conv_fns(dim, C)
        print(f"conv {name} C{C}: max |cl - copy| {err:.3g}", flush=True)
        for k, fn in fns.items():
            gpu, table = kernels(fn)
            row = dict(case=f"conv {k} {name} B8 L2048 C{C}", gpu_us=gpu, eager_us=1e3 * time_ms(fn, reps=10),
                       kernels=table)
            rows.append(row)
            print(f"  {k:12s} gpu {gpu:8.1f} us  eager {row['eager_us']:8.1f} us  "
                  + ", ".join(f"{v:.1f} {n[:28]}" for n, v in table.items()), file=sys.stderr, flush=True)
        got = {r["case"].split()[1]: r for r in rows[-4:]}
        print(f"conv {name} C{C} (gpu / eager us): fwd cl {got['fwd_cl']['gpu_us']:.1f} / {got['fwd_cl']['eager_us']:.1f}"
              f" vs copy {got['fwd_copy']['gpu_us']:.1f} / {got['fwd_copy']['eager_us']:.1f}; fwd+bwd cl "
              f"{got['fwdbwd_cl']['gpu_us']:.1f} / {got['fwdbwd_cl']['eager_us']:.1f} vs copy "
              f"{got['fwdbwd_copy']['gpu_us']:.1f} / {got['fwdbwd_copy']['eager_us']:.1f}", flush=True)
    if "--no-layer" not in sys.argv:
        for cl in (True, False):
            conv.CHANNELS_LAST_DEVICES = ("cuda",) if cl else ()
            for k, fn in layer_fns().items():
                gpu, table = kernels(fn)
                row = dict(case=f"Mamba2-130m {k} B8 L2048 channels_last={cl}", gpu_us=gpu,
                           eager_us=1e3 * time_ms(fn, reps=5), kernels=table)
                rows.append(row)
                print(f"{k} channels_last={cl:d}: gpu {gpu / 1e3:.3f} ms, eager {row['eager_us'] / 1e3:.3f} ms",
                      flush=True)
        conv.CHANNELS_LAST_DEVICES = ("cuda",)
    with open(sys.argv[1], "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
