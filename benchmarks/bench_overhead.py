"""Per-call overhead of the op layer on the CPU, and where a decode step's time goes.

1. Small op calls (dw_causal_conv on (1, 8, 1), the conv decode update, selective_state_step on a
   tiny Mamba-1 and Mamba-2 state, fused_layer_norm of one 768-wide token with a residual), eager,
   without autograd: median time of the public op, of the bare kernel binding with prepared
   arguments (the C++ work plus nanobind's crossing), and of an empty torch op (``x.view(-1)``)
   and a tiny ``torch.add`` as baselines. Overhead of the op layer = public - binding. Each is
   timed by the wall clock and by the calling thread's CPU time (``time.thread_time``), which a
   busy shared machine inflates less (time spent descheduled is not counted).
2. A decode step of mamba-130m-shaped models (Mamba-1 and Mamba-2, random weights, batch 1,
   float32): the step's median wall time, and the median time of the same matrix products alone
   (every nn.Linear call of a step, replayed with the same weights and input shapes, timed in
   alternation with the steps), so that the share outside the matrix products is
   1 - matmuls / step; plus torch.profiler's top self-CPU ops of a few steps.

3. The floor of one call: what each piece of a call costs alone (attribute reads, a tensor's kernel
   view, its part of a plan key, an allocation, the crossing into C++ of a kernel with no work),
   and from them the least a call with N tensors can cost; and the pieces of a planned state step call.

Prints a table and writes JSON to benchmarks/results/cpu/overhead.json.
Usage: python benchmarks/bench_overhead.py [--calls N] [--steps N] [--threads N] [--out PATH]
       [--decode-only] [--no-decode] [--repeats N]
"""
from __future__ import annotations

import argparse
import json
import os
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


def batch_us(fn, calls: int, batches: int = 15, clock=time.perf_counter) -> list[float]:
    """The mean time of one call (in microseconds) on ``clock`` in each of ``batches`` batches."""
    for _ in range(200):
        fn()
    per_call = []
    for _ in range(batches):
        t0 = clock()
        for _ in range(calls):
            fn()
        per_call.append((clock() - t0) / calls * 1e6)
    return per_call


def median_us(fn, calls: int, batches: int = 15, clock=time.perf_counter) -> float:
    """Median over batches of the mean time of one call (in microseconds) on ``clock``."""
    return statistics.median(batch_us(fn, calls, batches, clock))


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


def state_step_m2_case():
    # Mamba-2 per-head forms: state (1, 2, 4, 8); x (1, 2, 4); dt (1, 2); A, D, dt_bias (2,); B, C (1, 1, 8)
    state, x, dt = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4), torch.randn(1, 2)
    A, D, dt_bias = -torch.rand(2), torch.randn(2), torch.randn(2)
    B, C = torch.randn(1, 1, 8), torch.randn(1, 1, 8)
    out = torch.empty_like(x)
    mod, r = _kernels.module("cpu"), _kernels.ref
    head = lambda t: (t.data_ptr(), t.stride(0), 0)  # noqa: E731  (H,) as a tied (H, P)
    args = (0, 0, 1, 2, 4, 8, 1, r(state), r(x), (dt.data_ptr(), *dt.stride(), 0), (A.data_ptr(), 1, 0, 0),
            r(B), r(C), head(D), None, head(dt_bias), None, r(out), True, 1)
    public = lambda: ops.selective_state_update(state, x, dt, A, B, C, D, dt_bias=dt_bias, dt_softplus=True)  # noqa: E731
    return public, binding(mod.selective_state_step, args, (state, x, dt, A, B, C, D, dt_bias, out))


def layer_norm_case():
    # x, residual (1, 1, 768); weight, bias (768,); residual_out in float32
    x, res, w, b = torch.randn(1, 1, 768), torch.randn(1, 1, 768), torch.randn(768), torch.randn(768)
    y, res_out = torch.empty_like(x), torch.empty_like(x)
    mod = _kernels.module("cpu")
    rows = lambda t: (t.data_ptr(), 768, 1)  # noqa: E731
    args = (1, 768, 0, rows(x), (w.data_ptr(), 1), (b.data_ptr(), 1), 0, rows(res), 0, rows(y), rows(res_out),
            1e-5, False, 1)
    public = lambda: ops.layer_norm_fn(x, w, b, residual=res, prenorm=True, residual_in_fp32=True, eps=1e-5)  # noqa: E731
    return public, binding(mod.layer_norm_fwd, args, (x, res, w, b, y, res_out))


SMALL_OPS = (("dw_causal_conv (1,8,1)", conv_case), ("causal_conv1d_update (1,8) W4", conv_update_case),
             ("selective_state_step Mamba-1 (1,8,N4)", state_step_case),
             ("selective_state_step Mamba-2 (1,2,4,N8)", state_step_m2_case),
             ("layer_norm_fn+residual (1,1,768)", layer_norm_case))


def small_op_rows(calls: int) -> list[dict]:
    t = torch.randn(8)
    base = {name: {"wall": median_us(fn, calls), "cpu": median_us(fn, calls, clock=time.thread_time)}
            for name, fn in (("view", lambda: t.view(-1)), ("add", lambda: torch.add(t, t)))}
    rows = []
    for name, case in SMALL_OPS:
        public, binding_fn = case()
        row = {"op": name}
        for clock_name, clock in (("", time.perf_counter), ("cpu_", time.thread_time)):
            with torch.no_grad():
                pubs = batch_us(public, calls, clock=clock)
            binds = batch_us(binding_fn, calls, clock=clock)
            pub, bind = statistics.median(pubs), statistics.median(binds)
            key = clock_name.rstrip("_") or "wall"
            # the least batch: what a call costs when no other process got in the way
            row.update({f"{clock_name}public_us": pub, f"{clock_name}binding_us": bind,
                        f"{clock_name}op_layer_overhead_us": pub - bind,
                        f"{clock_name}least_batch_op_layer_overhead_us": min(pubs) - min(binds),
                        f"{clock_name}empty_torch_op_us": base["view"][key], f"{clock_name}tiny_torch_add_us": base["add"][key]})
        rows.append(row)
    return rows


# ---- the floor of one call ------------------------------------------------------------------------

def call_floor_rows(calls: int) -> dict:
    """What the pieces of an op call cost alone (thread CPU us, median of batches): attribute reads
    of one tensor, its kernel-side view, its part of a plan key, one output allocation, and the
    crossing into C++ of a kernel with no work (gemv of 1 x 1, 3 tensors + 1 None); from them the
    floor of a call with N tensors and one output that checks nothing (crossing + N views + 1
    allocation). A key part timed alone carries a call of its own, so it is not added in: the eager
    paths' plan keys cost what their measured overhead shows beyond this floor."""
    t = torch.randn(1, 1)
    w, out = torch.randn(1, 1), torch.empty(1, 1)
    mod, r = _kernels.module("cpu"), _kernels.ref
    rt, rw, ro = r(t), r(w), r(out)
    pieces = {
        "python call of 4 args": lambda: (lambda a, b, c, d: None)(1, 2, 3, 4),
        "t.data_ptr()": lambda: t.data_ptr(), "t.stride()": lambda: t.stride(), "t.shape": lambda: t.shape,
        "t.dtype": lambda: t.dtype, "t.device": lambda: t.device,
        "kernel view _kernels.ref(t)": lambda: r(t),
        "plan key part (type, shape, strides, dtype, device)": lambda: _kernels._metadata((), (t,)),
        "torch.empty_like(t)": lambda: torch.empty_like(t),
        "binding crossing, 3 prepared views": lambda: mod.gemv(0, 1, 1, 1, rt, rw, None, ro, 1),
    }
    us = {k: median_us(fn, calls, clock=time.thread_time) for k, fn in pieces.items()}
    view = us["kernel view _kernels.ref(t)"]
    cross, alloc = us["binding crossing, 3 prepared views"], us["torch.empty_like(t)"]
    floors = {n: cross + n * view + alloc for n in (4, 6, 9, 11)}
    return {"pieces_thread_cpu_us": us, "floor_thread_cpu_us_by_tensors": floors}


def planned_call_pieces(calls: int) -> dict:
    """Where a planned call of selective_state_step spends its time (Mamba-1 (1, 8, N4): 9 tensors,
    no indices; thread CPU us, median of batches): the whole public call, and each piece of it timed
    alone: the compile check, the plan lookup (small key + torch's tensor guard), the guard alone,
    the output allocation, the prepared kernel call (crossing, data pointers read in C++, kernel);
    "Python glue" = the whole - those pieces. Beside them, the plain binding of the same call with
    its per-tensor view tuples built in Python (the planned call before the prepared calls)."""
    from ssm.ops import state_step
    Dm, N = 8, 4
    state, x, dt, z = torch.randn(1, Dm, N), torch.randn(1, Dm), torch.randn(1, Dm), torch.randn(1, Dm)
    A, B, C, D, dt_bias = -torch.rand(Dm, N), torch.randn(1, N), torch.randn(1, N), torch.randn(Dm), torch.randn(Dm)
    args = (state, x, dt, A, B, C, D, z, dt_bias, None)
    with torch.no_grad():
        ops.selective_state_step(*args[:9], True)  # makes the plan
    sig, plan = _kernels.find_plan(state_step._plans, (True,), args)
    if _kernels._TensorGuards is None or not plan or plan[7] is None:
        return {}
    _, kernel, head, tails, _, out_like, _, prepared, _ = plan
    guard, present, out = state_step._plans._plans[sig[0]][0][0], sig[1], torch.empty_like(x)
    pieces = {
        "torch.compiler.is_compiling()": torch.compiler.is_compiling,
        "plan lookup (key + guard)": lambda: _kernels.find_plan(state_step._plans, (True,), args),
        "output allocation": lambda: _kernels.planned_output(x, out_like),
        "prepared kernel call": lambda: prepared(*args, out, 1),
    }
    with torch.no_grad():
        whole = median_us(lambda: ops.selective_state_step(*args[:9], True), calls, clock=time.thread_time)
    us = {k: median_us(fn, calls, clock=time.thread_time) for k, fn in pieces.items()}
    us["Python glue"] = whole - sum(us.values())
    aside = {
        "torch's tensor guard alone (9 tensors)": lambda: guard.check(*present),
        "plain binding, views built per call": lambda: kernel(
            *head, *_kernels.planned_refs(tails, (*args, out)), True, 1),
    }
    return {"public_call_thread_cpu_us": whole, "pieces_thread_cpu_us": us,
            "aside_thread_cpu_us": {k: median_us(fn, calls, clock=time.thread_time) for k, fn in aside.items()}}


# ---- decode step ---------------------------------------------------------------------------------

def _decode_model(layer: str):
    from ssm.models.config import MambaConfig
    from ssm.models.lm import MambaLMHeadModel
    torch.manual_seed(0)
    return MambaLMHeadModel(MambaConfig(d_model=768, n_layer=24, vocab_size=50277, ssm_cfg={"layer": layer})).eval()


class _RecordLinear(torch.overrides.TorchFunctionMode):
    """Records (weight, bias, input shape) of every F.linear call (nn.Linear or functional)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear:
            x, w = args[0], args[1]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            self.calls.append((w, b, torch.randn(x.shape, dtype=x.dtype)))
        return func(*args, **kwargs)


def _plan_projections(model, params) -> list:
    """(weight, bias, x) of the in_proj and out_proj of every block when the step ran through the CPU
    stack plan (ssm.models.cpu_decode), whose kernels make those products inside C++: the same
    products the per-block path hands to the small-batch kernel (x_proj and dt_proj stay inside the
    Mamba-1 layer kernel on both paths, as before)."""
    from ssm.models import cpu_decode
    if params.__dict__.get(cpu_decode._ATTR) is None or params.__dict__[cpu_decode._ATTR].steps is None:
        return []
    calls = []
    for layer in model.backbone.layers:
        for lin in (layer.mixer.in_proj, layer.mixer.out_proj):
            calls.append((lin.weight, lin.bias, torch.randn(1, lin.weight.shape[1], dtype=lin.weight.dtype)))
    return calls


def _matmul_replay(step, model, params):
    """A function running every linear call of one decode step again (same weights, inputs of
    the same shapes, through the same code: torch's F.linear or the CPU small-batch kernel of
    ssm.ops.norm_gemv): the step's matrix products alone."""
    from ssm.ops import norm_gemv
    kernel, gemv_calls = norm_gemv._cpu_gemv, []

    def record(x, w, b):
        gemv_calls.append((w, b, torch.randn(x.shape, dtype=x.dtype)))
        return kernel(x, w, b)
    norm_gemv._cpu_gemv = record
    try:
        with _RecordLinear() as rec:
            step()
    finally:
        norm_gemv._cpu_gemv = kernel
    gemv_calls += _plan_projections(model, params)

    def replay():
        for w, b, x in rec.calls:
            torch.nn.functional.linear(x, w, b)
        for w, b, x in gemv_calls:
            kernel(x, w, b)
    return replay, len(rec.calls) + len(gemv_calls)


def decode_profile(layer: str, steps: int) -> dict:
    from ssm.utils.inference import InferenceParams
    model = _decode_model(layer)
    prompt = torch.randint(0, 50277, (1, 8))
    params = InferenceParams(max_seqlen=8 + 4 * steps + 40, max_batch_size=1)
    with torch.no_grad():
        model(prompt, inference_params=params, num_last_tokens=1)
        params.seqlen_offset = prompt.shape[1]
        token = prompt[:, -1:]

        def step():
            model(token, inference_params=params, num_last_tokens=1)
            params.seqlen_offset += 1
        replay, n_linear = _matmul_replay(step, model, params)
        for _ in range(5):
            step()
            replay()
        step_s, mm_s, step_cpu, mm_cpu = [], [], [], []
        for _ in range(steps):  # alternating, so that both see the same machine load
            t0, c0 = time.perf_counter(), time.thread_time()
            step()
            t1, c1 = time.perf_counter(), time.thread_time()
            replay()
            step_s.append(t1 - t0)
            mm_s.append(time.perf_counter() - t1)
            step_cpu.append(c1 - c0)
            mm_cpu.append(time.thread_time() - c1)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step()
    step_ms, mm_ms = statistics.median(step_s) * 1e3, statistics.median(mm_s) * 1e3
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
    cpu_share = 1 - statistics.median(mm_cpu) / statistics.median(step_cpu)
    return {"layer": layer, "steps": steps, "step_ms": step_ms, "matmul_ms": mm_ms, "linear_calls": n_linear,
            "outside_matmul_share": 1 - mm_ms / step_ms, "outside_matmul_share_thread_cpu": cpu_share,
            "profiled_top_self_cpu": [{"op": e.key, "ms_per_step": e.self_cpu_time_total / 5 / 1e3,
                                       "calls_per_step": e.count // 5} for e in top]}


def decode_rows(steps: int, repeats: int) -> list:
    decode = []
    for _ in range(repeats):
        for layer in ("Mamba1", "Mamba2"):
            dec = decode_profile(layer, steps)
            decode.append(dec)
            print(f"decode step {layer} mamba-130m shape, batch 1, fp32: {dec['step_ms']:.2f} ms/step, its "
                  f"{dec['linear_calls']} matmuls alone {dec['matmul_ms']:.2f} ms: outside matmuls "
                  f"{100 * dec['outside_matmul_share']:.1f}% ({100 * dec['outside_matmul_share_thread_cpu']:.1f}% "
                  f"in thread CPU time)", flush=True)
            for e in dec["profiled_top_self_cpu"][:8]:
                print(f"  {e['op']:36s} {e['ms_per_step']:8.3f} ms/step  {e['calls_per_step']:5d} calls/step (profiled)")
    return decode


def decode_only(args) -> None:
    decode = decode_rows(args.steps, args.repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {**machine_info(), "load_avg_end": list(os.getloadavg())}
    out.write_text(json.dumps({"machine": machine, "decode": decode}, indent=1))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu/overhead.json"))
    parser.add_argument("--decode-only", action="store_true", help="only the decode steps' share outside matmuls")
    parser.add_argument("--repeats", type=int, default=1, help="decode measurements per model, alternating models")
    parser.add_argument("--no-decode", action="store_true", help="only the small op calls and their pieces")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.decode_only:
        return decode_only(args)
    rows = small_op_rows(args.calls)
    print(f"{'op':42s} {'public us':>10s} {'binding us':>11s} {'op layer us':>12s} {'(thread CPU time)':>18s} "
          f"{'(least batch, CPU)':>19s}")
    for r in rows:
        print(f"{r['op']:42s} {r['public_us']:10.2f} {r['binding_us']:11.2f} {r['op_layer_overhead_us']:12.2f} "
              f"{r['cpu_op_layer_overhead_us']:18.2f} {r['cpu_least_batch_op_layer_overhead_us']:19.2f}")
    print(f"baselines: empty torch op (view) {rows[0]['empty_torch_op_us']:.2f} us "
          f"({rows[0]['cpu_empty_torch_op_us']:.2f} thread CPU), torch.add on 8 floats "
          f"{rows[0]['tiny_torch_add_us']:.2f} us ({rows[0]['cpu_tiny_torch_add_us']:.2f})")
    floor = call_floor_rows(args.calls)
    print("pieces of a call (thread CPU us): " + ", ".join(f"{k} {v:.2f}" for k, v in floor["pieces_thread_cpu_us"].items()))
    print("floor of a call with N tensors + 1 output, no checks (thread CPU us): " + ", ".join(
        f"N={n}: {f:.1f}" for n, f in floor["floor_thread_cpu_us_by_tensors"].items()))
    pieces = planned_call_pieces(args.calls)
    if pieces:
        parts = {**pieces["pieces_thread_cpu_us"], **pieces["aside_thread_cpu_us"]}
        print(f"a planned selective_state_step call, {pieces['public_call_thread_cpu_us']:.2f} thread CPU us: "
              + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    decode = [] if args.no_decode else decode_rows(args.steps, args.repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {**machine_info(), "load_avg_end": list(os.getloadavg())}
    out.write_text(json.dumps({"machine": machine, "small_ops": rows, "call_floor": floor, "planned_call": pieces,
                               "decode": decode}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
