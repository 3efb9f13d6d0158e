"""Device round of engineer hostpath (session 10; issue 6: the training step's and prefill's host time).

In ONE process, without NaN poisoning, the 130m models (mamba2-130m, mamba-130m), in this order:
1. eager times before any profile (a profile slows what follows it in the process): the 8x2048 training step and
   prefill on this branch's host path and on main's (variants(): main's Python swapped back in), alternating
   (default, main, default), each with the host's time to issue the training forward alone and the backward alone;
2. a host-bound probe (batch 1, L 256: the GPU finishes each kernel before the host issues the next): the host's
   time a layer for the forward and the backward of each form, and the inclusive host time per call of the glue
   functions (timed by wrappers) on this branch's path;
3. after every eager row: one 8x2048 training step profiled (CPU and CUDA): kernel sum and launches, the GPU's idle
   gaps (forward + loss / backward; the largest with their neighbours), the host ops by self CPU time and the
   autograd nodes' host time (files in OUT).

Usage: python benchmarks/device/hostpath_round.py OUT_DIR [--budget SECONDS] [--models a,b]
Writes OUT_DIR/hostpath_round.json, gaps_*.txt, cpu_ops_*.txt; prints a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TEARDOWN_CUPTI", "1")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_models_cuda as bm  # noqa: E402

START = time.perf_counter()
LAYERS = 24


def host_ms(fn) -> float:
    """The host's time to issue one call (no sync inside), from an idle GPU."""
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    host = (time.perf_counter() - t) * 1e3
    torch.cuda.synchronize()
    return host


def split_host_ms(model, batch, L, reps=3) -> tuple[float, float]:
    """Host issue time of the training forward + loss and of loss.backward() alone (synchronized between), ms:
    medians of reps."""
    ids = torch.randint(0, bm.VOCAB, (batch, L + 1), device=bm.DEV)
    fwd, bwd = [], []
    for _ in range(reps + 1):
        torch.cuda.synchronize()
        t = time.perf_counter()
        loss = F.cross_entropy(model(ids[:, :-1]).logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        fwd.append((time.perf_counter() - t) * 1e3)
        torch.cuda.synchronize()
        t = time.perf_counter()
        loss.backward()
        bwd.append((time.perf_counter() - t) * 1e3)
        torch.cuda.synchronize()
    return statistics.median(fwd[1:]), statistics.median(bwd[1:])


# ---- main's host path, swapped back in for the A/B ------------------------------------------------

def _main_mamba2_fused(self, zxbcdt, seq_idx, in_proj_weight=None):
    """Mamba2._forward_fused as main calls the fused op: zxbcdt from in_proj outside (F.linear under autograd),
    A = -exp(A_log.float()) and the bf16 small parameters cast to float32 by autograd before the op."""
    from ssm import ops
    from ssm.modules import _states

    def f32(t):  # (without autograd main's op used its kept float32 copies: the op here does the same)
        return t.float().contiguous() if t is not None and t.requires_grad and torch.is_grad_enabled() else t
    if in_proj_weight is not None:
        zxbcdt = F.linear(zxbcdt, in_proj_weight)
    return ops.mamba_split_conv1d_scan_combined(
        zxbcdt, f32(self.conv1d.weight), f32(self.conv1d.bias), f32(self.dt_bias), _states.decode_A(self),
        D=f32(self._D()), chunk_size=self.chunk_size, seq_idx=seq_idx, activation=self.activation,
        rmsnorm_weight=f32(self.norm.weight) if self.rmsnorm else None,
        rmsnorm_eps=self.norm.eps if self.rmsnorm else 1e-6, outproj_weight=self.out_proj.weight,
        outproj_bias=self._out_bias(), headdim=None if self.D_has_hdim else self.headdim, ngroups=self.ngroups,
        norm_before_gate=self.norm_before_gate, **self._dt_limit_kwargs())


def _swap(obj, attr, value):
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    return lambda: setattr(obj, attr, old)


def _round1_proj_grads_rows(ddelta, dB, dC, xc, du, x_dbl, x_proj_w, dt_proj_w, N, B_given, C_given):
    """mamba_inner._proj_grads_rows as round 1 (and main) ran it: a zero-size fill for x_proj's unused rows."""
    from ssm.ops.mamba_inner import _product_sum
    batch, _, L = ddelta.shape
    rank = dt_proj_w.shape[1]
    d_dt_w = _product_sum(ddelta, x_dbl[:, :rank].transpose(1, 2))
    dBc = None if B_given else dB[:, 0]
    dCc = None if C_given else dC[:, 0]
    mid = x_dbl.shape[1] - rank - 2 * N
    parts = [torch.bmm(dt_proj_w.t().expand(batch, -1, -1), ddelta), dBc, x_dbl.new_zeros(batch, mid, L), dCc]
    parts = [x_dbl.new_zeros(batch, N, L) if p is None else p for p in parts if p is None or p.shape[1]]
    dx_dbl = torch.cat(parts, dim=1)
    d_x_w = _product_sum(dx_dbl, xc.transpose(1, 2))
    dxc = du.baddbmm_(x_proj_w.t().expand(batch, -1, -1), dx_dbl)
    return d_dt_w, d_x_w, dxc, dBc, dCc


def _fresh_norm_plans(make_grad_plan):
    """Swaps norm._make_grad_plan (False: the add + norm's general path under autograd, as round 1) with the
    norm's plans dropped (they are made again); returns the undo, which drops them again."""
    from ssm.ops import _kernels, norm
    norm._plans = _kernels.PlanCache()
    undo = _swap(norm, "_make_grad_plan", make_grad_plan)

    def restore():
        undo()
        norm._plans = _kernels.PlanCache()
    return restore


def round1_path(name):
    """A setter putting round 1's host path (this session's round-1 commit) in place; it returns the undo."""
    from ssm.ops import mamba_inner, ssd_split

    def setter():
        undo = [_fresh_norm_plans(lambda *a: False)]
        if name.startswith("mamba2"):
            undo += [_swap(ssd_split, "_checked_sizes", ssd_split._check_args)]
        else:
            undo += [_swap(mamba_inner, "_proj_grads_rows", _round1_proj_grads_rows),
                     _swap(mamba_inner, "_checked_inner", mamba_inner._check_inner)]
        return lambda: [u() for u in reversed(undo)]
    return setter


def main_path(name):
    """A setter putting main's host path in place for this model (round 1's forms inside the ops, main's Mamba2
    module forward); it returns the undo."""
    if name.startswith("mamba2"):
        from ssm.modules.mamba2 import Mamba2

        def setter():
            undo = [_swap(Mamba2, "_forward_fused", _main_mamba2_fused),
                    _swap(Mamba2, "_fused_in_proj", lambda self, *a: False), round1_path(name)()]
            return lambda: [u() for u in undo]
        return setter
    return round1_path(name)


def forms(name):
    """(label, setter or None) of the forms timed side by side, in this order."""
    if name.startswith("mamba2"):
        return [("default", None), ("round 1", round1_path(name)), ("main", main_path(name)),
                ("default again", None)]
    return [("default", None), ("round 1", round1_path(name)), ("default again", None)]


# ---- inclusive host time of the glue functions (wrappers) ---------------------------------------

def glue_targets(name):
    """(module, attribute) of the functions timed in the host-bound probe."""
    from ssm import ops
    from ssm.ops import _library, conv, gated_norm, mamba_inner, norm, ssd, ssd_split
    common = [(_library, "_unalias"), (norm, "_bwd_op"), (norm, "fused_layer_norm"), (norm, "_run_grad_plan")]
    if name.startswith("mamba2"):
        split = ("_fused_fwd", "_fused_bwd", "_kernel_params", "_param_grads", "_ssm_out", "_out_grads", "_conv_bwd",
                 "_ssd_bwd", "_gated_norm_bwd", "_conv_fwd", "_ssd_fwd", "_norm", "_in_proj_grads")
        return common + [(ops, "mamba_split_conv1d_scan_combined")] + [(ssd_split, n) for n in split] + [
            (ssd, "_bwd_cuda"), (ssd, "_fwd_impl"), (gated_norm, "_bwd_impl"), (conv, "_bwd_impl")]
    return common + [(ops, "mamba_inner_fn")] + [(mamba_inner, n) for n in ("_fused_fwd", "_fused_bwd", "_small_params",
                                                "_param_grads", "_scan", "_scan_bwd", "_conv_silu", "_project_rows",
                                                "_proj_grads_rows", "_out_proj_grads_rows", "_out_proj", "_grad_like",
                                                "_into_halves")] + [(conv, "_bwd_impl")]


def timed_glue(targets):
    """Wraps each target with a perf_counter accumulator; returns (totals dict, undo)."""
    totals, undo = {}, []
    for mod, attr in targets:
        fn = getattr(mod, attr, None)
        if fn is None:
            continue
        key = f"{mod.__name__.split('.')[-1]}.{attr}"
        totals[key] = [0, 0.0]

        def wrap(*args, _fn=fn, _acc=totals[key], **kw):
            t = time.perf_counter()
            try:
                return _fn(*args, **kw)
            finally:
                _acc[0] += 1
                _acc[1] += time.perf_counter() - t
        undo.append(_swap(mod, attr, wrap))
    return totals, lambda: [u() for u in reversed(undo)]


# ---- passes ----------------------------------------------------------------------------------------

def eager_pass(name, rows):
    model = bm.make_model(name)
    for label, set_ in forms(name):
        undo = set_() if set_ else None
        try:
            pre = bm.time_ms(bm.prefill_fn(model), reps=5, warmup=2, flush=False) if label != "default again" else None
            pre_host = statistics.median(host_ms(bm.prefill_fn(model)) for _ in range(2)) if pre else None
            model.train()
            step = bm.train_fn(model)
            step()
            torch.cuda.synchronize()
            before = torch.cuda.memory_stats()
            ms = bm.time_ms(step, reps=5, warmup=1, flush=False)
            mem = {k: torch.cuda.memory_stats().get(k, 0) - before.get(k, 0)
                   for k in ("num_device_alloc", "num_device_free", "num_alloc_retries", "num_sync_all_streams")}
            host = statistics.median(host_ms(step) for _ in range(2))
            fwd_h, bwd_h = split_host_ms(model, 8, 2048, reps=2)
            model.zero_grad(set_to_none=True)
            model.eval()
        finally:
            if undo:
                undo()
        rows.append(dict(model=name, form=label, work="8x2048", prefill_ms=pre, prefill_host_ms=pre_host,
                         train_ms=ms, train_host_ms=host, train_fwd_host_ms=fwd_h, train_bwd_host_ms=bwd_h,
                         allocator_in_6_steps=mem))
        if any(mem.values()):
            print(f"   allocator calls in 6 steady steps: {mem}", flush=True)
        pre_text = f"prefill {pre:6.2f} (host {pre_host:5.2f})" if pre else " " * 29
        print(f"{name:11s} {label:13s} {pre_text}  train {ms:6.2f} (host {host:5.2f}: fwd {fwd_h:5.2f} bwd "
              f"{bwd_h:5.2f})", flush=True)
    del model
    torch.cuda.empty_cache()


def probe_pass(name, rows, out: Path):
    """Host-bound probe (batch 1, L 256): the host's ms a layer, forward and backward, per form; the glue
    functions' inclusive host time per call on this branch's path."""
    model = bm.make_model(name).train()
    split_host_ms(model, 1, 256, reps=1)
    passes = {}
    for _ in range(3):  # (forms interleaved three times: the host's speed drifts; each form's median is kept)
        for label, set_ in forms(name):
            undo = set_() if set_ else None
            try:
                fwd_h, bwd_h = split_host_ms(model, 1, 256, reps=3)
                model.eval()
                pre = bm.prefill_fn(model, 1, 256)
                pre()
                pre_h = statistics.median(host_ms(pre) for _ in range(3))
                model.train()
            finally:
                if undo:
                    undo()
            passes.setdefault(label, []).append((fwd_h, bwd_h, pre_h))
    for label, got in passes.items():
        fwd_h, bwd_h, pre_h = (statistics.median(v) for v in zip(*got))
        rows.append(dict(model=name, form=label, work="probe 1x256", fwd_host_ms=fwd_h, bwd_host_ms=bwd_h,
                         prefill_host_ms=pre_h, passes=got))
        print(f"{name:11s} {label:13s} probe 1x256: host train fwd {fwd_h:6.2f} bwd {bwd_h:6.2f}, prefill "
              f"{pre_h:5.2f} ms ({1e3 * fwd_h / LAYERS:4.0f} / {1e3 * bwd_h / LAYERS:4.0f} / "
              f"{1e3 * pre_h / LAYERS:4.0f} us a layer)", flush=True)
    syncs = sync_report(model)
    rows.append(dict(model=name, work="sync check 1x256", syncs=syncs))
    print(f"   synchronizing calls in one 1x256 step: {len(syncs)}" + (f": {syncs[:3]}" if syncs else ""), flush=True)
    totals, undo = timed_glue(glue_targets(name))
    try:
        n = 4
        split_host_ms(model, 1, 256, reps=n - 1)  # (reps + 1 steps)
    finally:
        undo()
    model.zero_grad(set_to_none=True)
    lines = [f"{name}: inclusive host time per call (wrappers), {n} steps of 1x256, us"]
    for key, (count, total) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
        if count:
            lines.append(f"  {key:36s} calls/step {count / n:6.1f}  us/call {1e6 * total / count:8.1f}  "
                         f"us/step {1e6 * total / n:9.1f}")
    (out / f"glue_{name}.txt").write_text("\n".join(lines) + "\n")
    rows.append(dict(model=name, work="glue 1x256", glue={k: dict(calls=c / n, us_per_call=1e6 * t / c)
                                                          for k, (c, t) in totals.items() if c}))
    print("\n".join(lines[:12]), flush=True)
    del model
    torch.cuda.empty_cache()


def sync_report(model) -> list:
    """The host-device synchronizing calls of one training step (torch's sync debug mode, as warnings)."""
    import warnings
    ids = torch.randint(0, bm.VOCAB, (1, 257), device=bm.DEV)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            F.cross_entropy(model(ids[:, :-1]).logits.flatten(0, 1).float(), ids[:, 1:].flatten()).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    return sorted({f"{w.filename.split('/')[-1]}:{w.lineno} {str(w.message)[:80]}" for w in caught
                   if "synchroniz" in str(w.message).lower()})


def _device_events(prof):
    evs = [(k.start_ns() / 1e3, (k.start_ns() + k.duration_ns()) / 1e3, k.name())
           for k in prof.profiler.kineto_results.events()
           if k.device_type() == torch.autograd.DeviceType.CUDA and k.duration_ns() > 0]
    return sorted(evs)


def profile_pass(name, rows, out: Path):
    """One 8x2048 training step profiled (CPU + CUDA): kernels, gaps, host ops, autograd nodes."""
    model = bm.make_model(name).train()
    step = bm.train_fn(model)
    step()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        step()
        torch.cuda.synchronize()
    evs = _device_events(prof)
    if not evs:
        raise RuntimeError("the profile holds no device events")
    kernels = sum(e[1] - e[0] for e in evs) / 1e3
    split = next((i for i, e in enumerate(evs) if "SoftMaxBackward" in e[2] or "softmax_backward" in e[2].lower()),
                 len(evs))
    gaps, end = [], evs[0][1]
    for i in range(1, len(evs)):
        if evs[i][0] > end:
            gaps.append(((evs[i][0] - end) / 1e3, i, evs[i - 1][2], evs[i][2]))
        end = max(end, evs[i][1])
    idle = sum(g[0] for g in gaps)
    fwd_idle = sum(g[0] for g in gaps if g[1] <= split)
    span = (end - evs[0][0]) / 1e3
    lines = [f"{name} train 8x2048 (profiled, CPU + CUDA): span {span:.3f} ms, kernels {kernels:.3f} ms in "
             f"{len(evs)} device events ({split} before the loss backward, {len(evs) - split} from it), idle "
             f"{idle:.3f} ms (forward + loss {fwd_idle:.3f}, backward {idle - fwd_idle:.3f})",
             "   gap_ms  index  before -> after"]
    for g in sorted(gaps, reverse=True)[:25]:
        lines.append(f"  {g[0]:7.3f} {g[1]:6d}  {g[2][:60]} -> {g[3][:60]}")
    (out / f"gaps_{name}.txt").write_text("\n".join(lines) + "\n")
    averages = prof.key_averages()
    cpu = [e for e in averages if e.self_cpu_time_total > 0]
    cpu.sort(key=lambda e: -e.self_cpu_time_total)
    host = ["   self_cpu_ms  count  us_each  name"]
    for e in cpu[:80]:
        host.append(f"  {e.self_cpu_time_total / 1e3:11.3f} {e.count:6d} {e.self_cpu_time_total / e.count:8.1f}  "
                    f"{e.key[:110]}")
    nodes = [e for e in averages if e.key.startswith("autograd::engine::evaluate_function")]
    nodes.sort(key=lambda e: -e.cpu_time_total)
    host.append("\n  autograd nodes (inclusive CPU ms, count, us each):")
    for e in nodes[:40]:
        host.append(f"  {e.cpu_time_total / 1e3:11.3f} {e.count:6d} {e.cpu_time_total / e.count:8.1f}  {e.key[37:]}")
    (out / f"cpu_ops_{name}.txt").write_text("\n".join(host) + "\n")
    rows.append(dict(model=name, work="train 8x2048 profiled", span_ms=span, kernels_ms=kernels,
                     device_events=len(evs), fwd_events=split, idle_ms=idle, fwd_idle_ms=fwd_idle,
                     autograd_nodes=sum(e.count for e in nodes)))
    print(lines[0], flush=True)
    print(f"   launches a layer ~{len(evs) / LAYERS:.0f}; autograd nodes run {sum(e.count for e in nodes)}; "
          f"largest gaps: " + ", ".join(f"{g[0]:.3f}" for g in sorted(gaps, reverse=True)[:6]), flush=True)
    model.zero_grad(set_to_none=True)
    del model, prof
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--budget", type=float, default=30.0, help="seconds after which no new work starts")
    ap.add_argument("--models", default="mamba2-130m,mamba-130m")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list = []
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    names = args.models.split(",")
    stages = (("eager", eager_pass), ("probe", lambda n, r: probe_pass(n, r, out)),
              ("profile", lambda n, r: profile_pass(n, r, out)))
    for stage, run in stages:
        for name in names:
            if time.perf_counter() - START > args.budget:
                print(f"{name} {stage}: skipped (budget) at {time.perf_counter() - START:.1f} s", flush=True)
                continue
            try:
                run(name, rows)
            except Exception as e:  # one failure is reported, the rest still runs
                print(f"{name} {stage}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                rows.append(dict(model=name, stage=stage, error=f"{type(e).__name__}: {e}"))
            (out / "hostpath_round.json").write_text(json.dumps(dict(device=torch.cuda.get_device_name(),
                                                                     torch=torch.__version__, rows=rows), indent=1))
    print(f"done in {time.perf_counter() - START:.1f} s", flush=True)


if __name__ == "__main__":
    main()
