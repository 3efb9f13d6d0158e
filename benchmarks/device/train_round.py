"""Device round of engineer train (session 8; issue 6's end-to-end prefill and training rows).

In ONE process, without NaN poisoning, per model (mamba-130m, mamba-1.4b, mamba2-130m, mamba2-1.3b): first the
eager times (and host issue times) of every form, with no profiler run before them in the process: the prefill,
the 130m training step, for mamba-130m also session 7's host path (the conv through the dispatcher, the scan
unplanned), the scan unplanned and the default again; then the kernel sums (bench_models_cuda.kernel_figures)
and the GPU's idle gaps of the prefill and the training step; for mamba-130m one profiled training step (kernel
table by category, idle gaps, aten ops with shapes and the kernels each launched, cProfile of the host) and the
default training step once more after the profiles (their residue; CUPTI is torn down after each profile).

Usage: python benchmarks/device/train_round.py OUT_DIR [--budget SECONDS] [--models a,b]
Writes OUT_DIR/train_round.json, kernels_*.txt, gaps_*.txt, ops_*.txt, host_*.txt; prints a summary.
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
from e2e_profile import host_ms, host_profile, profile  # noqa: E402

START = time.perf_counter()


def op_table(fn, path: Path, top: int = 40) -> None:
    """One call profiled with CPU ops and shapes: aten ops by self device time (with input shapes)."""
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
        fn()
        torch.cuda.synchronize()
    table = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cuda_time_total", row_limit=top,
                                                                max_name_column_width=40, max_shapes_column_width=90)
    path.write_text(table + "\n\nkernels by the op that launched them (count, device ms, op, input shapes, kernel):\n"
                    + "\n".join(launch_owners(prof)[:60]) + "\n")


def launch_owners(prof) -> list:
    """(count, device ms, op and input shapes, kernel) lines, by device time: which aten op launched each kernel,
    memset and copy."""
    owners: dict = {}
    for e in prof.events():
        for k in getattr(e, "kernels", ()):
            key = (e.name, str(e.input_shapes)[:90], k.name[:80])
            n, us = owners.get(key, (0, 0.0))
            owners[key] = (n + 1, us + k.duration)
    rows = sorted(((us, n, key) for key, (n, us) in owners.items()), reverse=True)
    return [f"{n:5d} {us / 1e3:8.3f}  {op} {shapes}  {kern}" for us, n, (op, shapes, kern) in rows]


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


def extras(step, name: str, out: Path, prof: dict) -> None:
    """The GPU's idle gaps, the aten ops with shapes and the host's cProfile of one training step (each
    reported, a failure of one not stopping the others)."""
    try:
        gaps = gap_table(step, out / f"gaps_{name}_train.txt")
        prof["gaps"] = gaps
        print(f"  gaps {name} train: span {gaps['span_ms']:.2f} ms, idle {gaps['idle_ms']:.2f} (forward + loss "
              f"{gaps['fwd_idle_ms']:.2f}), {gaps['events']} device events", flush=True)
    except Exception as e:  # noqa: BLE001  (a profiler API difference must not stop the round)
        print(f"  gaps: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
    try:
        op_table(step, out / f"ops_{name}_train.txt")
        top = host_profile(step, out / f"host_{name}_train.txt")
        print("      host (cProfile tottime ms, calls): " + "; ".join(f"{t} {n}x {f}" for t, n, f in top[:5]),
              flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"  ops / host profile: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)


def eager_ms(name, work, fn, reps, rows) -> float:
    """Event time (bench_cuda.time_ms) and host issue time of one call, no profiler: a row."""
    ms = bm.time_ms(fn, reps=reps, warmup=2, flush=False)
    host = statistics.median(host_ms(fn) for _ in range(2))
    rows.append(dict(model=name, work=work, ms=ms, host_issue_ms=host))
    print(f"{name:12s} {work:40s} eager {ms:8.2f} ms  host {host:7.2f}", flush=True)
    return ms


def figures(name, work, fn, ms, rows) -> None:
    """The kernel sum of one call (profiler) beside an eager time taken before any profile."""
    fig = bm.kernel_figures(fn, ms)
    rows.append(dict(model=name, work=work + " [kernels]", ms=ms, **fig))
    print(f"{name:12s} {work:40s} kernels {fig['kernels_ms']:8.2f} ms  gap {fig['gap_ms']:6.2f}  "
          f"({fig['launches']} launches)", flush=True)


def run_model(name: str, out: Path, rows: list, budget: float, variants: list) -> None:
    """Eager times of every form first (no profiler in the process yet for the first model), then the
    kernel sums and profiles, then the default training step once more (the profiler's residue)."""
    model = bm.make_model(name)
    small = name.endswith("130m")
    pre = bm.prefill_fn(model)
    pre_ms = eager_ms(name, "prefill 8x2048", pre, 5 if small else 3, rows)
    forms = variants + [("default again", None)] if name == "mamba-130m" else []
    if name == "mamba-130m":
        undo = variants[0][1]()
        try:
            eager_ms(name, "prefill 8x2048 [session-7 host path]", pre, 5, rows)
        finally:
            undo()
    step, train = None, None
    if small:
        model.train()
        step = bm.train_fn(model)
        train = eager_ms(name, "train 8x2048 [default]", step, 5, rows)
        for label, setter in forms:
            undo = setter() if setter else None
            try:
                eager_ms(name, f"train 8x2048 [{label}]", step, 5, rows)
            finally:
                if undo:
                    undo()
    model.eval()
    figures(name, "prefill 8x2048", pre, pre_ms, rows)
    try:  # where the GPU idles in a prefill
        g = gap_table(pre, out / f"gaps_{name}_prefill.txt")
        print(f"      gaps: span {g['span_ms']:.2f} ms, idle {g['idle_ms']:.2f}, {g['events']} device events",
              flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"      gaps: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
    if small:
        model.train()
        figures(name, "train 8x2048 [default]", step, train, rows)
    if name == "mamba-130m" and time.perf_counter() - START < budget:
        prof = profile(step, out / f"kernels_{name}_train.txt", top=14)
        cats = ", ".join(f"{k} {v:.2f}" for k, v in sorted(prof["categories"].items(), key=lambda x: -x[1]))
        print(f"  profile {name} train: kernels {prof['kernels_ms']:.2f} ms | {cats}", flush=True)
        extras(step, name, out, prof)
        rows.append(dict(model=name, work="train profile", **prof))
        eager_ms(name, "train 8x2048 [default after the profiles]", step, 5, rows)
    if small:
        model.zero_grad(set_to_none=True)
        model.eval()
    del model
    torch.cuda.empty_cache()


def _switch(module, attr, value):
    def set_():
        old = getattr(module, attr)
        setattr(module, attr, value)
        return lambda: setattr(module, attr, old)
    return set_


def _dispatcher_conv(x, w, b):
    """Session 7's conv call in the fused Mamba-1 path: through the registered op (the dispatcher)."""
    return torch.ops.ssm.dw_causal_conv_fwd(x, w, b, None, None, True, False)[0]


def variants() -> list:
    """(label, setter) pairs timed beside the default mamba-130m training step; setter() returns undo."""
    from ssm.ops import mamba_inner

    def session7():  # the conv through the dispatcher and the scan through _fwd_run
        undo = [_switch(mamba_inner, "_conv_silu", _dispatcher_conv)(), _switch(mamba_inner, "PLANNED_SCAN", False)()]
        return lambda: [u() for u in undo]
    return [("session-7 host path", session7), ("scan unplanned", _switch(mamba_inner, "PLANNED_SCAN", False))]


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
    for name in args.models.split(","):
        if time.perf_counter() - START > args.budget:
            print(f"{name}: skipped (budget)", flush=True)
            continue
        try:
            run_model(name, out, rows, args.budget, variants())
        except Exception as e:  # one model's failure is reported, the others still run
            print(f"{name}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            rows.append(dict(model=name, error=f"{type(e).__name__}: {e}"))
        (out / "train_round.json").write_text(json.dumps(dict(device=torch.cuda.get_device_name(),
                                                              torch=torch.__version__, rows=rows), indent=1))
    print(f"done in {time.perf_counter() - START:.1f} s", flush=True)


if __name__ == "__main__":
    main()
