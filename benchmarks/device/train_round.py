"""Device round of engineer train (session 9; issue 6's end-to-end prefill and training rows).

In ONE process, without NaN poisoning: first the eager times (and host issue times) of every model
(mamba-130m, mamba-1.4b, mamba2-130m, mamba2-1.3b: the prefill, the 130m training step; for mamba-130m also
session 8's host path (xz from in_proj, the small parameters cast and A = -exp(A_log) by autograd before the
fused op, the norm weights cast by autograd), in_proj outside the op alone, the default again, and the host time to issue the training forward
alone, per form), before any profile (a
profile slows what follows it in the process); then, each model built again with the same seeded weights, the
kernel sums (bench_models_cuda.kernel_figures), the per-kernel tables of the profiled calls (kernels_<model>_<work>.txt)
and the GPU's idle gaps of the mamba-130m training step.

Usage: python benchmarks/device/train_round.py OUT_DIR [--budget SECONDS] [--models a,b]
Writes OUT_DIR/train_round.json, kernels_*.txt and gaps_mamba-130m_train.txt; prints a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# a profiler session leaves CUPTI attached unless torn down: eager timings after it ran 20-40% slower in round 1
os.environ.setdefault("TEARDOWN_CUPTI", "1")
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "device"))
import bench_models_cuda as bm  # noqa: E402
from e2e_profile import host_ms  # noqa: E402

START = time.perf_counter()


def _device_intervals(prof) -> list:
    """(start_us, end_us, name) of every device event of a profile, sorted by start."""
    evs = [(e.time_range.start, e.time_range.end, e.name) for e in prof.events()
           if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start]
    if not evs:  # (the kineto results hold them where the function events do not)
        evs = [(k.start_ns() / 1e3, (k.start_ns() + k.duration_ns()) / 1e3, k.name())
               for k in prof.profiler.kineto_results.events()
               if k.device_type() == torch.autograd.DeviceType.CUDA and k.duration_ns() > 0]
    return sorted(evs)


def gap_table(fn, path: Path, top: int = 14) -> dict:
    """One call profiled (device activity): the GPU's idle time between consecutive kernels (where it
    waited for the host), in all and before / after the first softmax-backward kernel (forward + loss /
    backward), and the largest gaps with the kernels around them."""
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    evs = _device_intervals(prof)
    split = next((i for i, e in enumerate(evs) if "SoftMaxBackward" in e[2]), len(evs))
    gaps, end = [], evs[0][1]
    for i in range(1, len(evs)):
        if evs[i][0] > end:
            gaps.append(((evs[i][0] - end) / 1e3, i, evs[i - 1][2], evs[i][2]))
        end = max(end, evs[i][1])
    idle = sum(g[0] for g in gaps)
    fwd_idle = sum(g[0] for g in gaps if g[1] <= split)
    span = (end - evs[0][0]) / 1e3
    lines = [f"span {span:.3f} ms, {len(evs)} device events, idle {idle:.3f} ms (forward + loss {fwd_idle:.3f}, "
             f"backward {idle - fwd_idle:.3f}); gaps > 20 us: {sum(g[0] > 0.02 for g in gaps)} "
             f"({sum(g[0] for g in gaps if g[0] > 0.02):.3f} ms)", "   gap_ms  index  before -> after"]
    for g in sorted(gaps, reverse=True)[:top]:
        lines.append(f"  {g[0]:7.3f} {g[1]:6d}  {g[2][:70]} -> {g[3][:70]}")
    path.write_text("\n".join(lines) + "\n")
    return dict(span_ms=span, idle_ms=idle, fwd_idle_ms=fwd_idle, events=len(evs), split=split)


def eager_ms(name, work, fn, reps, rows) -> float:
    """Event time (bench_cuda.time_ms) and host issue time of one call, no profiler: a row."""
    ms = bm.time_ms(fn, reps=reps, warmup=2, flush=False)
    host = statistics.median(host_ms(fn) for _ in range(2))
    rows.append(dict(model=name, work=work, ms=ms, host_issue_ms=host))
    print(f"{name:12s} {work:40s} eager {ms:8.2f} ms  host {host:7.2f}", flush=True)
    return ms


def kernel_table(fn, path: Path, eager_ms: float) -> dict:
    """One profiled call: bench_models_cuda.kernel_figures' sums, and every kernel's count and device time
    (sorted, largest first) into path."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = sorted((e for e in prof.key_averages() if e.self_device_time_total > 0),
                    key=lambda e: -e.self_device_time_total)
    kernels = sum(e.self_device_time_total for e in events) / 1e3
    lines = [f"kernels {kernels:.3f} ms in {sum(e.count for e in events)} launches (eager {eager_ms:.3f} ms)",
             "   ms_total  count   us_each  name"]
    for e in events:
        total = e.self_device_time_total / 1e3
        lines.append(f"  {total:9.3f} {e.count:6d} {1e3 * total / e.count:9.2f}  {e.key[:160]}")
    path.write_text("\n".join(lines) + "\n")
    return dict(kernels_ms=kernels, gap_ms=eager_ms - kernels, launches=sum(e.count for e in events))


def figures(name, work, fn, ms, rows, out: Path) -> None:
    """The kernel sum of one call (profiler) beside an eager time taken before any profile; its kernel table."""
    tag = work.split(" ")[0]
    fig = kernel_table(fn, out / f"kernels_{name}_{tag}.txt", ms)
    rows.append(dict(model=name, work=work + " [kernels]", ms=ms, **fig))
    print(f"{name:12s} {work:40s} kernels {fig['kernels_ms']:8.2f} ms  gap {fig['gap_ms']:6.2f}  "
          f"({fig['launches']} launches)", flush=True)


def forward_host_ms(model, rows, name, label) -> None:
    """The host's time to issue the training forward alone (under autograd, the graph dropped) and the backward
    alone (loss.backward() after a synchronized forward + loss), medians of 3."""
    ids = torch.randint(0, bm.VOCAB, (8, 2049), device=bm.DEV)

    def fwd():
        model(ids[:, :-1])

    def bwd_host():
        logits = model(ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        torch.cuda.synchronize()
        t = time.perf_counter()
        loss.backward()
        host = (time.perf_counter() - t) * 1e3
        torch.cuda.synchronize()
        return host
    fwd()
    host = statistics.median(host_ms(fwd) for _ in range(3))
    back = statistics.median(bwd_host() for _ in range(3))
    model.zero_grad(set_to_none=True)
    rows.append(dict(model=name, work=f"train forward / backward host [{label}]", host_issue_ms=host,
                     backward_host_ms=back))
    print(f"{name:12s} {'train fwd / bwd host issue [' + label + ']':40s} host {host:7.2f} / {back:7.2f} ms "
          f"({host / 24:.3f} / {back / 24:.3f} a layer)", flush=True)


def eager_pass(name: str, rows: list, variants: list) -> None:
    """A model's eager times (prefill; the 130m training step, for mamba-130m also on session 7's host path and
    the default again), before any profile in the process."""
    model = bm.make_model(name)
    small = name.endswith("130m")
    eager_ms(name, "prefill 8x2048", bm.prefill_fn(model), 5 if small else 3, rows)
    if small:
        model.train()
        step = bm.train_fn(model)
        forms = [("default", None)] + (variants + [("default again", None)] if name == "mamba-130m" else [])
        for label, setter in forms:
            undo = setter() if setter else None
            try:
                eager_ms(name, f"train 8x2048 [{label}]", step, 5, rows)
                if name == "mamba-130m":
                    forward_host_ms(model, rows, name, label)
            finally:
                if undo:
                    undo()
    del model
    torch.cuda.empty_cache()


def profile_pass(name: str, out: Path, rows: list) -> None:
    """A model's kernel sums beside its eager rows (the same seeded weights, built again), and the GPU's idle
    gaps of the mamba-130m training step."""
    model = bm.make_model(name)
    pre_ms = next(r["ms"] for r in rows if r["model"] == name and r["work"] == "prefill 8x2048")
    figures(name, "prefill 8x2048", bm.prefill_fn(model), pre_ms, rows, out)
    if name.endswith("130m"):
        model.train()
        step = bm.train_fn(model)
        train = next(r["ms"] for r in rows if r["model"] == name and r["work"] == "train 8x2048 [default]")
        figures(name, "train 8x2048 [default]", step, train, rows, out)
        if name == "mamba-130m":
            g = gap_table(step, out / f"gaps_{name}_train.txt")
            print(f"      gaps: span {g['span_ms']:.2f} ms, idle {g['idle_ms']:.2f} (forward + loss "
                  f"{g['fwd_idle_ms']:.2f}), {g['events']} device events", flush=True)
            host_profile(model, out / f"host_{name}_train_forward.txt")
            for label, setter in variants():  # the idle GPU time of the other host paths (after every eager row)
                undo = setter()
                try:
                    g = gap_table(step, out / f"gaps_{name}_train_{label.split()[0]}.txt")
                finally:
                    undo()
                print(f"      gaps [{label}]: span {g['span_ms']:.2f} ms, idle {g['idle_ms']:.2f} (forward + loss "
                      f"{g['fwd_idle_ms']:.2f})", flush=True)
        model.zero_grad(set_to_none=True)
    del model
    torch.cuda.empty_cache()


def host_profile(model, path: Path) -> None:
    """cProfile of one training forward (under autograd, the graph dropped): the host's time by function (cProfile
    inflates Python-heavy parts; relative figures)."""
    import cProfile
    import io
    import pstats
    ids = torch.randint(0, bm.VOCAB, (8, 2048), device=bm.DEV)
    model(ids)
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    model(ids)
    prof.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(40)
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(40)
    path.write_text(text.getvalue())


def _switch(module, attr, value):
    def set_():
        old = getattr(module, attr)
        setattr(module, attr, value)
        return lambda: setattr(module, attr, old)
    return set_


def _outside_in_proj(xz, in_proj_weight):
    """xz as session 8's Mamba1 computed it before the fused op (autograd nodes: view, t, mm, view, permute)."""
    if in_proj_weight is None:
        return xz
    batch, L, _ = xz.shape
    return torch.matmul(in_proj_weight, xz.reshape(batch * L, -1).t()).view(-1, batch, L).permute(1, 0, 2)


def _session8_inner(inner):
    """mamba_inner_fn as session 8's Mamba1 called it: xz from in_proj, the small parameters cast to float32 (the
    conv weight as (D, W)) and A = -exp(A_log) by autograd before the fused op (a node, and a kernel each)."""
    def call(xz, conv_w, conv_b, x_w, dt_w, out_w, out_b, A, B, C, D, delta_bias=None, delta_softplus=True,
             checkpoint_lvl=1, A_is_log=False, in_proj_weight=None):
        def f32(t):
            return None if t is None else t.float().contiguous()
        A = -torch.exp(A.float()) if A_is_log else A
        return inner(_outside_in_proj(xz, in_proj_weight), f32(conv_w).reshape(conv_w.shape[0], conv_w.shape[-1]),
                     f32(conv_b), x_w, dt_w, out_w, out_b, A, B, C, f32(D), delta_bias=f32(delta_bias),
                     delta_softplus=delta_softplus, checkpoint_lvl=checkpoint_lvl)
    return call


def _in_proj_outside(inner):
    """mamba_inner_fn with this session's small parameters (as they are, A_is_log) but xz from in_proj outside."""
    def call(xz, *args, in_proj_weight=None, **kw):
        return inner(_outside_in_proj(xz, in_proj_weight), *args, **kw)
    return call


def _session8_norm(norm_fn):
    """layer_norm_fn as session 8 ran it under autograd: the weight and bias cast to float32 by autograd first."""
    def call(x, weight, bias, *args, **kw):
        return norm_fn(x, weight.float(), None if bias is None else bias.float(), *args, **kw)
    return call


def variants() -> list:
    """(label, setter) pairs timed beside the default mamba-130m training step; setter() returns undo."""
    from ssm import ops

    def session8():
        undo = [_switch(ops, "mamba_inner_fn", _session8_inner(ops.mamba_inner_fn))(),
                _switch(ops, "layer_norm_fn", _session8_norm(ops.layer_norm_fn))()]
        return lambda: [u() for u in undo]
    return [("session-8 host path", session8),
            ("in_proj outside", _switch(ops, "mamba_inner_fn", _in_proj_outside(ops.mamba_inner_fn)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--budget", type=float, default=28.0, help="seconds after which no new work starts")
    ap.add_argument("--models", default="mamba-130m,mamba-1.4b,mamba2-130m,mamba2-1.3b")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list = []
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    names = args.models.split(",")
    for stage, run in (("eager", lambda n: eager_pass(n, rows, variants())),
                       ("profile", lambda n: profile_pass(n, out, rows))):
        for name in names:
            if time.perf_counter() - START > args.budget:
                print(f"{name} {stage}: skipped (budget)", flush=True)
                continue
            try:
                run(name)
            except Exception as e:  # one model's failure is reported, the others still run
                print(f"{name} {stage}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                rows.append(dict(model=name, stage=stage, error=f"{type(e).__name__}: {e}"))
            (out / "train_round.json").write_text(json.dumps(dict(device=torch.cuda.get_device_name(),
                                                                  torch=torch.__version__, rows=rows), indent=1))
    print(f"done in {time.perf_counter() - START:.1f} s", flush=True)


if __name__ == "__main__":
    main()
