"""End-to-end GPU benchmark of MambaLMHeadModel (random weights, bfloat16) in the conditions of
issue 6's table:

- prefill: forward of B x L tokens with full-vocabulary logits (8 x 2048),
- train step: forward + cross-entropy over all logits + backward, no optimizer (8 x 2048; 130m only),
- decode with ``cg=True``, greedy, prompt 16: latency per token =
  (time for 128 new tokens - time for 1) / 127, at batch 1 and 64.

Models are shaped like state-spaces/mamba2-130m, mamba2-1.3b, mamba-130m and mamba-1.4b. The
prefill of the 130m shapes is also run on the reference path (SSM_BACKEND=reference) in the same
run. Each row also carries the work's floors on this card and at the issue's H100 rates
(model_floors_cuda.py: the strict one, and the one of a design that runs norms, conv and scan as separate
passes), from the copy and matmul rates measured first. Prefill and train rows also carry the
host-independent figure of the same run: the profiler's kernel-time sum of one call, the gap
eager - kernels (the host's share) and the host's time to issue one call, profiled after every eager row
(each model built again). Prints a table and writes JSON.

Usage: python benchmarks/bench_models_cuda.py [--models mamba2-130m,...] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# A profiler session leaves CUPTI attached unless torn down: in session 8's round 1 the eager times taken after
# profiles in the same process ran 20-40% slower (host issue time of the mamba-130m training step 59 -> 111 ms);
# torn down, still ~15% (round 1b): the kernel sums are taken after every eager row (add_profiled_figures)
os.environ.setdefault("TEARDOWN_CUPTI", "1")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_cuda import backend, copy_bandwidth, time_ms  # noqa: E402
from bench_ssd_cuda import matmul_tflops  # noqa: E402
from model_floors_cuda import floors  # noqa: E402
from ssm.models.config import MambaConfig  # noqa: E402
from ssm.models.lm import MambaLMHeadModel  # noqa: E402

DEV = torch.device("cuda")
VOCAB = 50277
H100 = dict(copy_gbs=3010.0, matmul_tflops=710.0)  # the issue's H100, for floors at its rates
CLOCK_GHZ = 1.98  # H100 / H200 SXM boost clock: the MUFU rate of the scan's floor
PROMPT, NEW = 16, 128
# name -> (layer, d_model, n_layer, issue-6 targets in ms: prefill, train, decode b1, decode b64)
MODELS = {
    "mamba2-130m": ("Mamba2", 768, 24, (20.0, 100.0, 0.35, 1.0)),
    "mamba2-1.3b": ("Mamba2", 2048, 48, (80.0, None, 1.2, 5.0)),
    "mamba-130m": ("Mamba1", 768, 24, (16.0, 80.0, 0.35, 0.7)),
    "mamba-1.4b": ("Mamba1", 2048, 48, (100.0, None, 1.2, 2.5)),
}


def make_model(name: str) -> MambaLMHeadModel:
    layer, d_model, n_layer, _ = MODELS[name]
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=VOCAB, ssm_cfg={"layer": layer})
    return MambaLMHeadModel(cfg, device=DEV, dtype=torch.bfloat16).eval()


def prefill_fn(model, batch=8, L=2048):
    """One prefill call: forward of batch x L random tokens with full-vocabulary logits."""
    ids = torch.randint(0, VOCAB, (batch, L), device=DEV)

    def run():
        with torch.inference_mode():
            model(ids)
    return run


def train_fn(model, batch=8, L=2048):
    """One training step (the model in train mode): forward, cross-entropy over all logits, backward."""
    ids = torch.randint(0, VOCAB, (batch, L + 1), device=DEV)

    def step():
        logits = model(ids[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
    return step


def prefill_ms(model, batch=8, L=2048, reps=10) -> float:
    return time_ms(prefill_fn(model, batch, L), reps=reps, warmup=min(2, reps), flush=False)


def train_ms(model, batch=8, L=2048, profile: dict | None = None, host: dict | None = None) -> float:
    """Eager training-step time (with host, also its host issue time into it); with profile (a row), instead
    the kernel figures of one step into that row."""
    model.train()
    step = train_fn(model, batch, L)
    try:
        if profile is not None:
            add_kernel_figures(profile, kernel_figures(step, profile["ms"]))
            return profile["ms"]
        ms = time_ms(step, reps=5, warmup=2, flush=False)
        if host is not None:
            host["host_issue_ms"] = host_issue_ms(step)
        return ms
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def host_issue_ms(fn) -> float:
    """The host's time to issue one call, no sync inside (at or above the eager time = host-bound): median of 2."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(2):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
        torch.cuda.synchronize()
    return statistics.median(times)


def kernel_figures(fn, eager_ms: float) -> dict:
    """The host-independent figure of an eager row: the profiler's kernel-time sum of one call
    (device time of every kernel, memset and copy it launches, no gaps) and the gap eager - kernels
    (host time the GPU waited for: launches, Python, syncs)."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    kernels = sum(e.self_device_time_total for e in events) / 1e3
    return dict(kernels_ms=kernels, gap_ms=eager_ms - kernels, launches=sum(e.count for e in events))


def add_kernel_figures(row: dict, figures: dict) -> None:
    """Puts a prefill / train row's kernel sum and gap into it and prints them."""
    row.update(figures)
    print(f"  {row['model']:12s} {row['work']:22s} kernels {figures['kernels_ms']:9.3f} ms ({figures['launches']} "
          f"launches), gap {figures['gap_ms']:7.3f} ms ({100 * figures['gap_ms'] / row['ms']:4.1f}% host share), "
          f"host issue {row.get('host_issue_ms', float('nan')):8.3f} ms", flush=True)


def add_profiled_figures(name: str, rows: list) -> None:
    """The kernel figures of a model's prefill and train rows, profiled after every model's eager rows (the model
    built again, same seeded weights): a profile slows what follows it in the process (session 8, rounds 1 and
    1b: +15-40% on the 130m training step's eager time, teardown of CUPTI or not)."""
    model = make_model(name)
    for row in rows:
        if row.get("model") != name or "kernels_ms" in row:
            continue
        if row["work"].startswith("prefill"):
            add_kernel_figures(row, kernel_figures(prefill_fn(model), row["ms"]))
        elif row["work"].startswith("train"):
            train_ms(model, profile=row)
    del model
    torch.cuda.empty_cache()


def print_kernel_table(rows: list) -> None:
    """The prefill / train rows side by side: eager, kernel sum (host-independent), gap, host issue."""
    rows = [r for r in rows if "kernels_ms" in r]
    if not rows:
        return
    print(f"\n  {'model':12s} {'work':18s} {'eager ms':>9s} {'kernels ms':>10s} {'gap ms':>7s} {'host ms':>8s}"
          f" {'target':>7s}")
    for r in rows:
        print(f"  {r['model']:12s} {r['work']:18s} {r['ms']:9.2f} {r['kernels_ms']:10.2f} {r['gap_ms']:7.2f}"
              f" {r.get('host_issue_ms', float('nan')):8.2f} {r['target_ms'] or '':>7}", flush=True)


def _generate_s(model, ids, new_tokens: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(ids, max_length=PROMPT + new_tokens, cg=True)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def decode_ms_per_token(model, batch: int) -> float:
    """(t(128 new) - t(1 new)) / 127 with cg=True; the longer run first so one graph serves both."""
    ids = torch.randint(0, VOCAB, (batch, PROMPT), device=DEV)
    _generate_s(model, ids, NEW)  # captures the graph and warms up
    _generate_s(model, ids, 1)
    long = statistics.median(_generate_s(model, ids, NEW) for _ in range(3))
    short = statistics.median(_generate_s(model, ids, 1) for _ in range(3))
    return (long - short) / (NEW - 1) * 1e3


def bench_model(name: str, rows: list, limits: dict) -> None:
    model = make_model(name)
    targets = MODELS[name][3]
    small = name.endswith("130m")
    sms = torch.cuda.get_device_properties(DEV).multi_processor_count
    here = floors(model, limits["copy_gbs"], limits["matmul_tflops"], CLOCK_GHZ, sms)
    h100 = floors(model, H100["copy_gbs"], H100["matmul_tflops"], CLOCK_GHZ, 132)

    def add(work, ms, target, ref_ms=None):
        row = dict(model=name, work=work, ms=ms, target_ms=target, met=None if target is None else ms <= target,
                   ref_ms=ref_ms, speedup_vs_ref=None if ref_ms is None else ref_ms / ms,
                   floor_ms=here[work]["strict"], floor_passes_ms=here[work]["passes"],
                   h100_floor_ms=h100[work]["strict"], h100_floor_passes_ms=h100[work]["passes"])
        if "prefill" in work or "train" in work:
            row["tokens_per_s"] = 8 * 2048 / ms * 1e3
        else:
            row["tokens_per_s"] = (64 if "b64" in work else 1) / ms * 1e3
        rows.append(row)
        print(f"  {name:12s} {work:22s} {ms:9.3f} ms  {row['tokens_per_s']:12.0f} tok/s"
              + (f"  ref {ref_ms:9.2f} ms ({ref_ms / ms:5.1f}x)" if ref_ms else "")
              + (f"  target {target} ms {'met' if ms <= target else 'MISSED'}" if target else "")
              + f"  floors {row['floor_ms']:.3f} / {row['floor_passes_ms']:.3f} ms"
              + f" (H100 rates {row['h100_floor_ms']:.3f} / {row['h100_floor_passes_ms']:.3f})", flush=True)

    ref = None
    if small:
        with backend("reference"):
            ref = prefill_ms(model, reps=1)  # the reference path is slow: one timed rep
    add("prefill 8x2048", prefill_ms(model), targets[0], ref)
    rows[-1]["host_issue_ms"] = host_issue_ms(prefill_fn(model))
    if small:
        host: dict = {}
        add("train step 8x2048", train_ms(model, host=host), targets[1])
        rows[-1].update(host)
    add("decode b1 per token", decode_ms_per_token(model, 1), targets[2])
    add("decode b64 per step", decode_ms_per_token(model, 64), targets[3])
    del model
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default="bench_models_cuda.json")
    args = ap.parse_args()
    rows: list = []
    limits = dict(copy_gbs=copy_bandwidth(), matmul_tflops=matmul_tflops())
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}: copy {limits['copy_gbs']:.0f} GB/s, "
          f"bf16 matmul {limits['matmul_tflops']:.0f} TFLOP/s (floors: strict / separate passes, model_floors_cuda)")
    for name in args.models.split(","):
        try:
            bench_model(name, rows, limits)
        except Exception as e:  # one model's failure is reported, the others still run
            print(f"  {name}: FAILED {type(e).__name__}: {e}", flush=True)
            rows.append(dict(model=name, error=f"{type(e).__name__}: {e}"))
        Path(args.out).write_text(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                                                  **limits, rows=rows), indent=1))
    for name in args.models.split(","):  # the kernel sums, after every eager row
        try:
            add_profiled_figures(name, rows)
        except Exception as e:  # reported; the eager rows stand
            print(f"  {name}: kernel figures FAILED {type(e).__name__}: {e}", flush=True)
    Path(args.out).write_text(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                                              **limits, rows=rows), indent=1))
    print_kernel_table(rows)


if __name__ == "__main__":
    main()
