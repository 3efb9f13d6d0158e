"""Where the end-to-end GPU prefill and training time goes (issue 6; engineer e2e's device rounds).

For each model of benchmarks/bench_models_cuda.py (random weights, bf16, 8 x 2048): the prefill
(forward with full-vocabulary logits) and, for the 130m shapes, the training step (forward +
cross-entropy + backward, no optimizer): event time (median), the host time to issue one call
(perf_counter without a sync: below the event time = GPU-bound), and one profiled call: the sum
of its kernel times (wall - sum = the GPU's idle gaps), per category (GEMM, our ssm kernels,
torch elementwise / copies, reductions, softmax / cross-entropy) and the top kernels by total
time. Variants (module switches) are timed in the same process.

Usage: python benchmarks/device/e2e_profile.py OUT_DIR [--models a,b] [--budget SECONDS]
Writes OUT_DIR/e2e_profile.json and OUT_DIR/kernels_<model>_<work>.txt; prints a summary.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_models_cuda import MODELS, VOCAB, make_model  # noqa: E402

DEV = torch.device("cuda")
START = time.perf_counter()
CATEGORIES = (("gemm", ("gemm", "xmma", "cutlass", "nvjet", "cublas", "splitk")),
              ("softmax/ce", ("softmax", "nll_loss", "cross_entropy", "log_softmax")),
              ("reduce", ("reduce_kernel", "reduce")),
              ("copy/cast", ("copy", "cat", "direct_copy")),
              ("elementwise", ("elementwise", "vectorized", "unrolled")),
              ("embedding", ("embedding", "index", "indexing")))


def category(name: str) -> str:
    low = name.lower()
    if "ssm::" in name or any(k in low for k in ("selective_scan", "ssd", "chunk_", "conv_", "layer_norm_",
                                                  "gated_norm", "state_passing", "fwd_block", "bwd_pair")):
        return "ssm"
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


def event_ms(fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def host_ms(fn) -> float:
    """Time to issue one call (no sync inside; the GPU may still be running when it returns)."""
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    host = (time.perf_counter() - t) * 1e3
    torch.cuda.synchronize()
    return host


def profile(fn, path: Path, top: int = 12) -> dict:
    """One profiled call: kernel totals by name and category; the full table into path."""
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) * 1e3
    by_name: dict = defaultdict(lambda: [0.0, 0])
    for e in prof.key_averages():  # (as bench_cuda.kernel_ms reads them)
        if e.self_device_time_total > 0:
            by_name[e.key][0] += e.self_device_time_total / 1e3
            by_name[e.key][1] += e.count
    rows = sorted(((ms, n, name) for name, (ms, n) in by_name.items()), reverse=True)
    cats: dict = defaultdict(float)
    for ms, _, name in rows:
        cats[category(name)] += ms
    total = sum(r[0] for r in rows)
    with open(path, "w") as f:
        f.write(f"wall {wall:.3f} ms (profiled), kernels {total:.3f} ms, {sum(r[1] for r in rows)} launches\n")
        f.write("categories: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(cats.items(), key=lambda x: -x[1]))
                + "\n\n   ms_total  count   ms_each  name\n")
        for ms, n, name in rows:
            f.write(f"{ms:10.3f} {n:6d} {ms / n:9.4f}  [{category(name)}] {name[:220]}\n")
    return dict(kernels_ms=total, launches=sum(r[1] for r in rows), profiled_wall_ms=wall,
                categories=dict(cats), top=[(round(ms, 3), n, name[:160]) for ms, n, name in rows[:top]])


def host_profile(fn, path: Path, top: int = 30) -> list:
    """cProfile of one call (where the host's time goes: Python, launches, waits); table into path."""
    import cProfile
    import io
    import pstats
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    fn()
    torch.cuda.synchronize()
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).sort_stats("tottime")
    stats.print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    path.write_text(buf.getvalue())
    rows = sorted(((st[2], st[1], f"{fn_[0].split('/')[-1]}:{fn_[1]}({fn_[2]})")
                   for fn_, st in stats.stats.items()), reverse=True)[:6]
    return [(round(t * 1e3, 2), n, name[:90]) for t, n, name in rows]


def prefill_fn(model, ids):
    def run():
        with torch.inference_mode():
            model(ids)
    return run


def train_fn(model, ids):
    def run():
        logits = model(ids[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
    return run


def measure(name, work, fn, out: Path, reps: int, summary: list) -> dict:
    ms = event_ms(fn, reps)
    host = statistics.median(host_ms(fn) for _ in range(2))
    tag = "".join(c if c.isalnum() else "_" for c in work.replace(" 8x2048", "")).strip("_")
    prof = profile(fn, out / f"kernels_{name}_{tag}.txt")
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30
    row = dict(model=name, work=work, event_ms=ms, host_issue_ms=host, peak_gib=peak, **prof)
    cats = ", ".join(f"{k} {v:.2f}" for k, v in sorted(prof["categories"].items(), key=lambda x: -x[1]))
    line = (f"{name:11s} {work:26s} event {ms:8.2f} ms  kernels {prof['kernels_ms']:8.2f} ({prof['launches']} "
            f"launches)  host {host:7.2f}  peak {peak:5.1f} GiB | {cats}")
    print(line, flush=True)
    summary.append(line)
    for ms_, n, kname in prof["top"][:6]:
        print(f"      {ms_:8.3f} ms {n:5d}x  {kname[:120]}", flush=True)
    if work == "train 8x2048":  # the host side of the plain training step (idle GPU gaps)
        row["host_top"] = host_profile(fn, out / f"host_{name}_{tag}.txt")
        print("      host (cProfile tottime ms, calls): "
              + "; ".join(f"{t} {n}x {f}" for t, n, f in row["host_top"]), flush=True)
    return row


def _switch(module, attr, value):
    def set_():
        old = getattr(module, attr)
        setattr(module, attr, value)
        return lambda: setattr(module, attr, old)
    return set_


def variants(name: str):
    """(label, setter) pairs of module switches to time beside the default; setter() returns undo."""
    from ssm.modules import mamba1
    from ssm.ops import ssd_split
    if name.startswith("mamba2"):
        return [("split KEEP_Y=0", _switch(ssd_split, "KEEP_Y", False))]
    return [("mamba1 CHECKPOINT_LVL=1", _switch(mamba1, "CHECKPOINT_LVL", 1))]


def run_model(name, out: Path, rows: list, summary: list, budget: float):
    model = make_model(name)
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (8, 2049), device=DEV)
    small = name.endswith("130m")
    rows.append(measure(name, "prefill 8x2048", prefill_fn(model, ids[:, :-1]), out, 5 if small else 3, summary))
    if small and time.perf_counter() - START < budget:
        model.train()
        rows.append(measure(name, "train 8x2048", train_fn(model, ids), out, 3, summary))
        for label, setter in variants(name):
            if time.perf_counter() - START > budget:
                break
            undo = setter()
            try:
                rows.append(measure(name, f"train 8x2048 [{label}]", train_fn(model, ids), out, 3, summary))
            finally:
                undo()
            again = event_ms(train_fn(model, ids), 3, 1)  # the default again: the variants' noise
            rows.append(dict(model=name, work="train 8x2048 (again)", event_ms=again))
            print(f"{name:11s} train 8x2048 (default again)  event {again:8.2f} ms", flush=True)
        fwd = lambda: model(ids[:, :-1])  # noqa: E731  (the training forward alone: autograd's host cost)
        fwd_ms, fwd_host = event_ms(fwd, 3, 1), statistics.median(host_ms(fwd) for _ in range(2))
        rows.append(dict(model=name, work="train forward only", event_ms=fwd_ms, host_issue_ms=fwd_host))
        print(f"{name:11s} train forward only          event {fwd_ms:8.2f} ms  host {fwd_host:7.2f}", flush=True)
        model.zero_grad(set_to_none=True)
    del model
    torch.cuda.empty_cache()


# (name, M, K, N): the models' big GEMMs, out (M, N) = a (M, K) @ w (N, K)^T as F.linear runs them
GEMMS = (("m1-130m in_proj", 16384, 768, 3072), ("m2-130m in_proj", 16384, 768, 3352),
         ("130m out_proj", 16384, 1536, 768), ("130m lm_head", 16384, 768, 50280),
         ("m2-1.3b in_proj", 16384, 2048, 8512), ("1.3b out_proj", 16384, 4096, 2048),
         ("1.3b lm_head", 16384, 2048, 50280))


def gemm_check(rows: list):
    """cuBLAS's own rate on the models' GEMM shapes (bf16, event median), beside the profile's GEMM totals."""
    for label, M, K, N in GEMMS:
        a = torch.randn(M, K, device=DEV, dtype=torch.bfloat16)
        w = torch.randn(N, K, device=DEV, dtype=torch.bfloat16)
        ms = event_ms(lambda: F.linear(a, w), 10, 3)
        tflops = 2 * M * K * N / ms / 1e9
        rows.append(dict(work="gemm " + label, M=M, K=K, N=N, ms=ms, tflops=tflops))
        print(f"  gemm {label:16s} {M}x{K}x{N}: {ms:7.3f} ms {tflops:6.0f} TFLOP/s", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--models", default="mamba-130m,mamba2-130m,mamba2-1.3b,mamba-1.4b")
    ap.add_argument("--budget", type=float, default=30.0, help="seconds after which no new work starts")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list = []
    summary: list = []
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    for name in args.models.split(","):
        if time.perf_counter() - START > args.budget:
            print(f"{name}: skipped (budget)")
            continue
        try:
            run_model(name, out, rows, summary, args.budget)
        except Exception as e:  # one model's failure is reported, the others still run
            print(f"{name}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            rows.append(dict(model=name, error=f"{type(e).__name__}: {e}"))
        (out / "e2e_profile.json").write_text(json.dumps(dict(device=torch.cuda.get_device_name(), rows=rows),
                                                         indent=1))
    if time.perf_counter() - START < args.budget + 3:
        gemm_check(rows)
        (out / "e2e_profile.json").write_text(json.dumps(dict(device=torch.cuda.get_device_name(), rows=rows),
                                                         indent=1))
    print(f"done in {time.perf_counter() - START:.1f} s")


if __name__ == "__main__":
    main()
