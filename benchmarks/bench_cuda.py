"""Times the ssm CUDA kernels on the local GPU beside the reference path and a large
device-to-device copy measured in the same run. Builds nothing (build the CUDA module first).

Each figure is the median of repeated runs timed with CUDA events; large kernels run after an
L2 flush, decode steps run inside a CUDA graph over rotating state buffers larger than L2.
Prints a table; writes JSON (machine, versions, shapes, times, bandwidth fractions) to --out.

    python3 benchmarks/bench_cuda.py --out results.json [--only scan,conv,step,norm]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import ssm.ops as ops  # noqa: E402
from ssm.ops.python import reference  # noqa: E402
from ssm.utils import dispatch  # noqa: E402

DEV = torch.device("cuda")
BF16 = torch.bfloat16


def _flush(buf=[]):
    if not buf:
        buf.append(torch.empty(256 << 20, dtype=torch.uint8, device=DEV))
    buf[0].zero_()


def time_ms(fn, reps=20, warmup=3, flush=True, inner=1):
    """Median milliseconds of fn() with CUDA events (L2 flushed before each rep). With inner > 1
    each rep times that many calls back to back (for calls whose Python cost could leave the
    GPU idle; only for working sets far larger than L2) and divides."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if flush:
            _flush()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def kernel_ms(fn, iters=5):
    """Device time of the kernels fn() launches (profiler), per call: the figure without launch gaps."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    total_us = sum(e.self_device_time_total for e in prof.key_averages())
    return total_us / iters / 1e3


def graph_time_ms(fns, reps=20):
    """Median milliseconds per call of fns (one call each, rotating buffers) replayed in a CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(stream)
    # at least 32 launches per replay, so the replay's own launch cost is spread thin
    calls = [fns[i % len(fns)] for i in range(max(32, len(fns)))]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for f in calls:
            f()
    return time_ms(graph.replay, reps=reps, flush=False) / len(calls)


def backend(name):
    class Force:
        def __enter__(self):
            self.old = os.environ.get("SSM_BACKEND")
            os.environ["SSM_BACKEND"] = name

        def __exit__(self, *exc):
            if self.old is None:
                os.environ.pop("SSM_BACKEND", None)
            else:
                os.environ["SSM_BACKEND"] = self.old
    return Force()


def copy_bandwidth():
    src = torch.randn(512 << 20, device=DEV, dtype=BF16)  # 1 GiB
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), reps=20, flush=False)
    return 2 * src.numel() * src.element_size() / ms / 1e6  # GB/s


RESULTS = []


def record(name, shape, ms, nbytes, copy_gbs, ref_ms=None, target_ms=None, note="", kms=None):
    if kms is not None:
        note = (note + "; " if note else "") + f"kernels alone {kms * 1e3:.1f} us (profiler)"
    gbs = nbytes / ms / 1e6
    row = dict(name=name, shape=shape, ms=ms, bytes=nbytes, gbs=gbs, frac_copy=gbs / copy_gbs,
               floor_ms=nbytes / copy_gbs / 1e6, ref_ms=ref_ms, speedup_vs_ref=None if ref_ms is None else ref_ms / ms,
               target_ms=target_ms, met=None if target_ms is None else ms <= target_ms, note=note)
    RESULTS.append(row)
    print(f"  {name:34s} {ms * 1e3:10.1f} us  {gbs:7.0f} GB/s ({100 * gbs / copy_gbs:5.1f}% copy)"
          + (f"  ref {ref_ms * 1e3:10.1f} us ({ref_ms / ms:6.1f}x)" if ref_ms else "")
          + (f"  target {target_ms * 1e3:.0f} us {'met' if ms <= target_ms else 'MISSED'}" if target_ms else "")
          + (f"  [kernels {kms * 1e3:.1f} us]" if kms is not None else ""), flush=True)


def nbytes(*ts):
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def bench_conv(copy_gbs):
    B, D, L, W = 8, 4096, 2048, 4
    x = torch.randn(B, D, L, device=DEV, dtype=BF16)
    w = torch.randn(D, W, device=DEV) * 0.5
    b = torch.randn(D, device=DEV)
    fwd = lambda: ops.dw_causal_conv(x, w, b, "silu")
    ms = time_ms(fwd, inner=5)
    with backend("reference"):
        ref_ms = time_ms(fwd, reps=5)
    record("conv fwd", f"B{B} D{D} L{L} W{W} bf16 silu", ms, 2 * nbytes(x), copy_gbs, ref_ms, 0.100, kms=kernel_ms(fwd))
    xg = x.clone().requires_grad_()
    wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
    dy = torch.randn_like(x)

    def fwd_bwd():
        xg.grad = wg.grad = bg.grad = None  # no gradient accumulation kernels in the figure
        y = ops.dw_causal_conv(xg, wg, bg, "silu")
        torch.autograd.backward(y, dy)
    ms = time_ms(fwd_bwd, inner=5)
    with backend("reference"):
        ref_ms = time_ms(fwd_bwd, reps=5)
    # fwd: x, y; bwd: x, dy, dx
    record("conv fwd+bwd", f"B{B} D{D} L{L} W{W} bf16 silu", ms, 5 * nbytes(x), copy_gbs, ref_ms, 0.260,
           kms=kernel_ms(fwd_bwd))


def bench_scan(copy_gbs):
    B, D, L, N = 8, 4096, 2048, 16
    u, delta, z = (torch.randn(B, D, L, device=DEV, dtype=BF16) for _ in range(3))
    delta = delta * 0.5 - 1.0
    A = -torch.rand(D, N, device=DEV) - 0.5
    Bm, Cm = (torch.randn(B, 1, N, L, device=DEV, dtype=BF16) for _ in range(2))
    Dp, bias = torch.randn(D, device=DEV), torch.randn(D, device=DEV) * 0.1
    fwd = lambda: ops.selective_scan(u, delta, A, Bm, Cm, Dp, z, bias, True)
    ms = time_ms(fwd, inner=3)
    with backend("reference"):
        ref_ms = time_ms(fwd, reps=1, warmup=1)
    io = nbytes(u, delta, z, Bm, Cm) + nbytes(u)
    record("selective_scan fwd", f"B{B} D{D} L{L} N{N} bf16 z D dt_bias softplus", ms, io, copy_gbs, ref_ms, 0.55,
           kms=kernel_ms(fwd))
    leaves = [t.clone().requires_grad_() for t in (u, delta, A, Bm, Cm, Dp, z, bias)]
    dy = torch.randn_like(u)

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        y = ops.selective_scan(*leaves[:7], leaves[7], True)
        torch.autograd.backward(y, dy)
    ms = time_ms(fwd_bwd, reps=10)
    # fwd io; bwd reads u, delta, z, B, C, dy and writes du, ddelta, dz, dB, dC
    record("selective_scan fwd+bwd", f"B{B} D{D} L{L} N{N} bf16", ms, io + 2 * io, copy_gbs, None, 3.5,
           kms=kernel_ms(fwd_bwd, iters=2))


def step_case(name, batch, H, P, N, mamba1, copy_gbs, target_ms, with_ref=True):
    # rotate enough state buffers to exceed L2 (50 MB) several times over
    state_bytes = batch * H * P * N * 2
    nbuf = max(2, min(64, (200 << 20) // state_bytes))
    if mamba1:
        states = [torch.randn(batch, H, N, device=DEV, dtype=BF16) for _ in range(nbuf)]
        x, dt, z = (torch.randn(batch, H, device=DEV, dtype=BF16) for _ in range(3))
        A = -torch.rand(H, N, device=DEV)
        Bm, Cm = (torch.randn(batch, N, device=DEV, dtype=BF16) for _ in range(2))
        Dp, bias = torch.randn(H, device=DEV), torch.randn(H, device=DEV)
    else:
        states = [torch.randn(batch, H, P, N, device=DEV, dtype=BF16) for _ in range(nbuf)]
        x, z = (torch.randn(batch, H, P, device=DEV, dtype=BF16) for _ in range(2))
        dt = torch.randn(batch, H, device=DEV, dtype=BF16).unsqueeze(-1).expand(batch, H, P)
        A = (-torch.rand(H, device=DEV))[:, None, None].expand(H, P, N)
        Bm, Cm = (torch.randn(batch, 1, N, device=DEV, dtype=BF16) for _ in range(2))
        Dp = torch.randn(H, device=DEV)[:, None].expand(H, P)
        bias = torch.randn(H, device=DEV)[:, None].expand(H, P)
    fns = [lambda s=s: ops.selective_state_step(s, x, dt, A, Bm, Cm, Dp, z, bias, True) for s in states]
    ms = graph_time_ms(fns)
    ref_ms = None
    if with_ref:
        with backend("reference"):
            ref_ms = time_ms(fns[0], reps=10, flush=False)
    io = 2 * nbytes(states[0]) + 2 * nbytes(x) + nbytes(z)
    record(name, f"batch {batch} " + (f"D{H} N{N}" if mamba1 else f"H{H} P{P} N{N}") + " bf16 state", ms, io,
           copy_gbs, ref_ms, target_ms, note="CUDA graph, rotating buffers")


def bench_step(copy_gbs):
    step_case("state step Mamba-2 b64", 64, 80, 64, 128, False, copy_gbs, 0.070)
    step_case("state step Mamba-2 b1", 1, 80, 64, 128, False, copy_gbs, 0.003)
    step_case("state step Mamba-1 b64", 64, 5120, 1, 16, True, copy_gbs, 0.010)
    # the steps launched without programmatic dependent launch (SSM_PDL=0; by default with it, the state prefetched
    # into L2 before the wait on the previous kernel)
    os.environ["SSM_PDL"] = "0"
    try:
        step_case("state step Mamba-2 b1 (SSM_PDL=0)", 1, 80, 64, 128, False, copy_gbs, 0.003, with_ref=False)
        step_case("state step Mamba-1 b64 (SSM_PDL=0)", 64, 5120, 1, 16, True, copy_gbs, 0.010, with_ref=False)
    finally:
        del os.environ["SSM_PDL"]


def bench_norm(copy_gbs):
    M = 16384
    for width in (2048, 4096):
        x, res = (torch.randn(M, width, device=DEV, dtype=BF16) for _ in range(2))
        w, b = torch.randn(width, device=DEV), torch.randn(width, device=DEV)
        for is_rms in (False, True):
            name = f"{'rms' if is_rms else 'layer'}norm+res w{width}"
            bias = None if is_rms else b
            fwd = lambda: ops.fused_layer_norm(x, w, bias, res, is_rms, 1e-5, True, True)
            ms = time_ms(fwd)
            with backend("reference"):
                ref_ms = time_ms(fwd, reps=5)
            # x, residual in (bf16); y out (bf16), residual_out out (fp32)
            record(f"{name} fwd", f"{M}x{width} bf16", ms, 3 * nbytes(x) + 2 * nbytes(x), copy_gbs, ref_ms,
                   kms=kernel_ms(fwd))
            leaves = [t.clone().requires_grad_() for t in (x, w, res)]
            bl = None if is_rms else b.clone().requires_grad_()
            dy, dr = torch.randn_like(x), torch.randn(M, width, device=DEV)

            def fwd_bwd():
                for t in (*leaves, bl):
                    if t is not None:
                        t.grad = None
                y, r = ops.fused_layer_norm(leaves[0], leaves[1], bl, leaves[2], is_rms, 1e-5, True, True)
                torch.autograd.backward([y, r], [dy, dr])
            ms = time_ms(fwd_bwd, inner=5)
            with backend("reference"):
                ref_ms = time_ms(fwd_bwd, reps=3)
            # fwd 5 units; bwd: s (fp32), dy, dres (fp32) in; dx, dresidual (bf16) out: 7 units
            record(f"{name} fwd+bwd", f"{M}x{width} bf16", ms, 12 * nbytes(x), copy_gbs, ref_ms, kms=kernel_ms(fwd_bwd))
        z = torch.randn_like(x)
        gw = torch.randn(width, device=DEV)
        fwd = lambda: ops.gated_rms_norm(x, gw, None, z, 1e-6, width // 8, False, True)
        ms = time_ms(fwd)
        with backend("reference"):
            ref_ms = time_ms(fwd, reps=5)
        record(f"gated rmsnorm fwd w{width} g{width // 8}", f"{M}x{width} bf16", ms, 3 * nbytes(x), copy_gbs, ref_ms,
               kms=kernel_ms(fwd))
        xg, zg, gwg = (t.clone().requires_grad_() for t in (x, z, gw))

        def gated_fwd_bwd():
            xg.grad = zg.grad = gwg.grad = None
            y = ops.gated_rms_norm(xg, gwg, None, zg, 1e-6, width // 8, False, True)
            torch.autograd.backward(y, dy)
        ms = time_ms(gated_fwd_bwd, inner=5)
        # fwd: x, z in, y out; bwd: x, z, dy in, dx, dz out
        record(f"gated rmsnorm fwd+bwd w{width} g{width // 8}", f"{M}x{width} bf16", ms, 8 * nbytes(x), copy_gbs,
               kms=kernel_ms(gated_fwd_bwd))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_cuda.json")
    ap.add_argument("--only", default="conv,scan,step,norm")
    args = ap.parse_args()
    assert dispatch.has_cuda_kernels(), dispatch.missing_reason("cuda")
    props = torch.cuda.get_device_properties(0)
    copy_gbs = copy_bandwidth()
    print(f"{props.name}: {props.multi_processor_count} SMs; device-to-device copy {copy_gbs:.0f} GB/s", flush=True)
    for part in args.only.split(","):
        try:
            globals()[f"bench_{part}"](copy_gbs)
        except Exception as e:  # a missing op or kernel must not hide the other figures
            print(f"  {part}: skipped ({type(e).__name__}: {e})", flush=True)
    meta = dict(device=props.name, sms=props.multi_processor_count, torch=torch.__version__,
                cuda=torch.version.cuda, python=platform.python_version(), copy_gbs=copy_gbs)
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, results=RESULTS), f, indent=1)


if __name__ == "__main__":
    main()
