"""Per-call overhead of the op layer on the CPU, and where a decode step's time goes.

1. Small op calls (dw_causal_conv on (1, 8, 1), the conv decode update, selective_state_step on a
   tiny Mamba-1 state): median time of the public op, of the bare kernel binding with prepared
   arguments (the C++ work plus nanobind's crossing), and of an empty torch op (``x.view(-1)``)
   and a tiny ``torch.add`` as baselines. Overhead of the op layer = public - binding.
2. A decode step of a mamba-130m-shaped model (random weights, batch 1, float32): torch.profiler
   time inside the matrix products (aten::mm / addmm / matmul / linear / bmm, self CPU time) vs
   the whole step, i.e. the share spent outside them.

Prints a table and writes JSON to benchmarks/results/cpu/overhead.json.
Usage: python benchmarks/bench_overhead.py [--calls N] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import ssm.ops as ops  # noqa: E402
from ssm.ops import _kernels  # noqa: E402
from bench_norm_conv import machine_info  # noqa: E402

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_mkl_linear")


def median_us(fn, calls: int, batches: int = 15) -> float:
    """Median over batches of the mean time of one call (in microseconds)."""
    for _ in range(200):
        fn()
    per_call = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        per_call.append((time.perf_counter() - t0) / calls)
    return statistics.median(per_call) * 1e6


# ---- small op calls --------------------------------------------------------------------------------

def binding(fn, args, tensors):
    """A call of the bare binding; the closure keeps the tensors behind the raw pointers alive."""
    def call(keep=tensors):
        return fn(*args)
    return call


def conv_case():
    # x (1, 8, 1); weight (8, 4) float32; bias (8,)
    x, w, b = torch.randn(1, 8, 1), torch.randn(8, 4), torch.randn(8)
    y = torch.empty_like(x)
    mod, r = _kernels.module("cpu"), _kernels.ref
    args = (0, 1, 8, 1, 4, r(x), r(w), r(b), None, None, r(y), None, True, 1)
    return (lambda: ops.dw_causal_conv(x, w, b, "silu")), binding(mod.dw_causal_conv_fwd, args, (x, w, b, y))


def conv_update_case():
    # x (1, 8); conv_state (1, 8, 4); weight (8, 4); bias (8,)
    x, state, w, b = torch.randn(1, 8), torch.randn(1, 8, 4), torch.randn(8, 4), torch.randn(8)
    x3, y = x[..., None], torch.empty(1, 8, 1)
    mod, r = _kernels.module("cpu"), _kernels.ref
    args = (0, 1, 8, 1, 4, 1, 4, r(x3), r(state), r(w), r(b), None, None, r(y), True, 1)
    return (lambda: ops.causal_conv1d_update(x, state, w, b, "silu")), \
        binding(mod.dw_causal_conv_update, args, (x3, state, w, b, y))


def state_step_case():
    # Mamba-1: state (1, 8, 4); x, dt, z (1, 8); A (8, 4); B, C (1, 4); D, dt_bias (8,)
    Dm, N = 8, 4
    state = torch.randn(1, Dm, N)
    x, dt, z = torch.randn(1, Dm), torch.randn(1, Dm), torch.randn(1, Dm)
    A, B, C = -torch.rand(Dm, N), torch.randn(1, N), torch.randn(1, N)
    D, dt_bias = torch.randn(Dm), torch.randn(Dm)
    # the kernel's Mamba-2 view: state (1, 8, 1, 4), x (1, 8, 1), B, C (1, 1, 4), D (8, 1)
    s4, x4, dt4, z4 = state[:, :, None], x[..., None], dt[..., None], z[..., None]
    A3, B3, C3, D2, db2 = A[:, None], B[:, None], C[:, None], D[:, None], dt_bias[:, None]
    out = torch.empty_like(x4)
    mod, r = _kernels.module("cpu"), _kernels.ref
    args = (0, 0, 1, Dm, 1, N, 1, r(s4), r(x4), r(dt4), r(A3), r(B3), r(C3), r(D2), r(z4), r(db2), None,
            r(out), True, 1)
    public = lambda: ops.selective_state_step(state, x, dt, A, B, C, D, z, dt_bias, True)  # noqa: E731
    return public, binding(mod.selective_state_step, args, (s4, x4, dt4, z4, A3, B3, C3, D2, db2, out))


def small_op_rows(calls: int) -> list[dict]:
    t = torch.randn(8)
    empty_us = median_us(lambda: t.view(-1), calls)
    add_us = median_us(lambda: torch.add(t, t), calls)
    rows = []
    for name, case in (("dw_causal_conv (1,8,1)", conv_case), ("causal_conv1d_update (1,8) W4", conv_update_case),
                       ("selective_state_step (1,8,N4)", state_step_case)):
        public, binding = case()
        with torch.no_grad():
            pub = median_us(public, calls)
        bind = median_us(binding, calls)
        rows.append({"op": name, "public_us": pub, "binding_us": bind, "op_layer_overhead_us": pub - bind,
                     "empty_torch_op_us": empty_us, "tiny_torch_add_us": add_us})
    return rows


# ---- decode step ---------------------------------------------------------------------------------

def decode_profile(steps: int) -> dict:
    from ssm.models.config import MambaConfig
    from ssm.models.lm import MambaLMHeadModel
    from ssm.utils.inference import InferenceParams
    torch.manual_seed(0)
    model = MambaLMHeadModel(MambaConfig(d_model=768, n_layer=24, vocab_size=50277, ssm_cfg={"layer": "Mamba1"})).eval()
    prompt = torch.randint(0, 50277, (1, 8))
    params = InferenceParams(max_seqlen=8 + steps + 20, max_batch_size=1)
    with torch.no_grad():
        model(prompt, inference_params=params, num_last_tokens=1)
        params.seqlen_offset = prompt.shape[1]
        token = prompt[:, -1:]

        def step():
            model(token, inference_params=params, num_last_tokens=1)
            params.seqlen_offset += 1
        for _ in range(5):
            step()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        plain_ms = (time.perf_counter() - t0) / steps * 1e3
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
    events = prof.key_averages()
    # self time of the matmul family (nested: linear -> addmm, each counts only its own share)
    mm_us = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    total_us = prof.profiler.self_cpu_time_total if hasattr(prof.profiler, "self_cpu_time_total") else \
        sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    return {"steps": steps, "step_ms_unprofiled": plain_ms,
            "profiled_step_ms": total_us / steps / 1e3, "matmul_ms_per_step": mm_us / steps / 1e3,
            "outside_matmul_share": 1 - mm_us / total_us,
            "outside_matmul_share_of_unprofiled_step": 1 - (mm_us / steps / 1e3) / plain_ms,
            "top_self_cpu": [{"op": e.key, "ms_per_step": e.self_cpu_time_total / steps / 1e3, "calls": e.count}
                             for e in top]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu/overhead.json"))
    args = parser.parse_args()
    rows = small_op_rows(args.calls)
    print(f"{'op':34s} {'public us':>10s} {'binding us':>11s} {'op layer us':>12s}")
    for r in rows:
        print(f"{r['op']:34s} {r['public_us']:10.2f} {r['binding_us']:11.2f} {r['op_layer_overhead_us']:12.2f}")
    print(f"baselines: empty torch op (view) {rows[0]['empty_torch_op_us']:.2f} us, "
          f"torch.add on 8 floats {rows[0]['tiny_torch_add_us']:.2f} us")
    dec = decode_profile(args.steps)
    print(f"decode step mamba-130m shape, batch 1, fp32: {dec['step_ms_unprofiled']:.2f} ms/step unprofiled; "
          f"matmuls {dec['matmul_ms_per_step']:.2f} ms; outside matmuls {100 * dec['outside_matmul_share']:.1f}% "
          f"of profiled time, {100 * dec['outside_matmul_share_of_unprofiled_step']:.1f}% of the unprofiled step")
    for e in dec["top_self_cpu"]:
        print(f"  {e['op']:36s} {e['ms_per_step']:8.3f} ms/step  {e['calls'] // args.steps:5d} calls/step")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), "small_ops": rows, "decode": dec}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
