"""Per-kernel device times (profiler) of one norm fwd+bwd call and one gated norm fwd+bwd call
at 16384 x 4096 bf16, the breakdown behind bench_cuda.py's norm rows (device round `norms`)."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import ssm.ops as ops  # noqa: E402


def breakdown(name, fn, iters=3):
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)
    print(f"{name}:")
    for e in rows[:8]:
        if e.self_device_time_total > 0:
            print(f"  {e.self_device_time_total / iters:8.1f} us  x{e.count // iters}  {e.key[:90]}")


def main():
    dev, M, N = torch.device("cuda"), 16384, 4096
    x, res, z, dy = (torch.randn(M, N, device=dev, dtype=torch.bfloat16) for _ in range(4))
    dr = torch.randn(M, N, device=dev)
    w, b = torch.randn(N, device=dev, requires_grad=True), torch.randn(N, device=dev, requires_grad=True)
    xg, rg, zg = (t.clone().requires_grad_() for t in (x, res, z))

    def ln():
        y, r = ops.fused_layer_norm(xg, w, b, rg, False, 1e-5, True, True)
        torch.autograd.backward([y, r], [dy, dr])

    def gated():
        y = ops.gated_rms_norm(xg, w, None, zg, 1e-6, N // 8, False, True)
        torch.autograd.backward(y, dy)
    breakdown("layernorm+res fwd+bwd w4096", ln)
    breakdown("gated rmsnorm fwd+bwd w4096 g512", gated)


if __name__ == "__main__":
    main()
