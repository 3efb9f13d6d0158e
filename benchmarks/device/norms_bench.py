"""Device round `norms`, one process: bench_cuda.py's norm and conv rows (JSON to argv[1]),
the eager fwd+bwd of conv and LayerNorm with the dispatcher-free path on and off
(_library.EAGER_DIRECT; event time and host time per call), and the per-kernel breakdown of
the w4096 LayerNorm and gated norm fwd+bwd."""
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import bench_cuda as bc  # noqa: E402
import ssm.ops as ops  # noqa: E402
from ssm.ops import _library  # noqa: E402


def host_us(fn, n=20):
    """Host time per call of n calls issued back to back (the GPU runs behind)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - start) / n
    torch.cuda.synchronize()
    return host * 1e6


def eager_ab():
    dev, bf16 = bc.DEV, bc.BF16
    x = torch.randn(8, 4096, 2048, device=dev, dtype=bf16, requires_grad=True)
    w, b = torch.randn(4096, 4, device=dev, requires_grad=True), torch.randn(4096, device=dev, requires_grad=True)
    dy = torch.randn_like(x)
    xn, rn = (torch.randn(16384, 4096, device=dev, dtype=bf16, requires_grad=True) for _ in range(2))
    wn, bn = torch.randn(4096, device=dev, requires_grad=True), torch.randn(4096, device=dev, requires_grad=True)
    dyn, drn = torch.randn(16384, 4096, device=dev, dtype=bf16), torch.randn(16384, 4096, device=dev)

    def conv():
        x.grad = w.grad = b.grad = None
        torch.autograd.backward(ops.dw_causal_conv(x, w, b, "silu"), dy)

    def norm():
        xn.grad = rn.grad = wn.grad = bn.grad = None
        torch.autograd.backward(list(ops.fused_layer_norm(xn, wn, bn, rn, False, 1e-5, True, True)), [dyn, drn])
    for name, fn in (("conv fwd+bwd", conv), ("layernorm+res w4096 fwd+bwd", norm)):
        for direct in (True, False):
            _library.EAGER_DIRECT = direct
            ms = bc.time_ms(fn, inner=5)
            print(f"  {name:30s} EAGER_DIRECT={direct!s:5}: event {ms * 1e3:7.1f} us, host {host_us(fn):7.1f} us/call",
                  flush=True)
    _library.EAGER_DIRECT = True


def breakdown(name, fn, iters=3):
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    print(f"  {name}:")
    for e in sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)[:7]:
        if e.self_device_time_total > 0:
            print(f"    {e.self_device_time_total / iters:8.1f} us x{e.count // iters}  {e.key[:80]}", flush=True)


def kernels():
    dev, bf16, M, N = bc.DEV, bc.BF16, 16384, 4096
    xg, rg, zg = (torch.randn(M, N, device=dev, dtype=bf16, requires_grad=True) for _ in range(3))
    w, b = torch.randn(N, device=dev, requires_grad=True), torch.randn(N, device=dev, requires_grad=True)
    dy, dr = torch.randn(M, N, device=dev, dtype=bf16), torch.randn(M, N, device=dev)
    breakdown("layernorm+res fwd+bwd w4096", lambda: torch.autograd.backward(
        list(ops.fused_layer_norm(xg, w, b, rg, False, 1e-5, True, True)), [dy, dr]))
    breakdown("gated rmsnorm fwd+bwd w4096 g512", lambda: torch.autograd.backward(
        ops.gated_rms_norm(xg, w, None, zg, 1e-6, N // 8, False, True), dy))


def main():
    props = torch.cuda.get_device_properties(0)
    copy = bc.copy_bandwidth()
    print(f"{props.name}: copy {copy:.0f} GB/s", flush=True)
    bc.bench_norm(copy)
    bc.bench_conv(copy)
    with open(sys.argv[1], "w") as f:
        json.dump(dict(meta=dict(device=props.name, copy_gbs=copy), results=bc.RESULTS), f, indent=1)
    eager_ab()
    kernels()


if __name__ == "__main__":
    main()
