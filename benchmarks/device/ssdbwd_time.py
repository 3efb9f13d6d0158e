"""Device round of the dedicated CUDA SSD backward (ssdbwd, session 8), timing part: one Python process, after
the tests (run by ssdbwd.sh in another process: their conftest poisons kernel outputs with NaN).

    python benchmarks/device/ssdbwd_time.py OUT_DIR

fwd+bwd at issue 6's shapes (bf16; D, dt_bias, softplus; chunk 256) per backward form: the profiler's kernel sum and
top kernels, the eager wall time (CUDA events, L2 flushed), the host time per call; at B1 the host ops' self CPU
time per call, and with SSDBWD_TRACE=1 one call's trace: kernels and CUDA runtime calls per call, the GPU's idle
gaps inside the call and the kernels they precede (the eager gap).
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

FORMS = {  # name: environment
    "default": {"SSM_SSD_BWD_SPLIT": "1"},
    "nosplit": {"SSM_SSD_BWD_SPLIT": "0"},
    "dt32": {"SSM_SSD_BWD_SPLIT": "1"},  # dt given in float32: no dtype copy of dt (forward) or ddt (backward)
}


def host_table(fn, reps=3):
    """Self CPU microseconds per call of the host ops of fn (profiler, CPU activity), largest first."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    rows = {e.key[:50]: (e.self_cpu_time_total / reps, e.count // reps) for e in prof.key_averages()}
    top = sorted(rows.items(), key=lambda kv: -kv[1][0])[:14]
    return {k: (round(v[0], 1), v[1]) for k, v in top}


def kernel_table(fn, iters=3):
    """Per-call device time of each kernel fn launches (profiler), in us, largest first."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = {e.key[:60]: e.self_device_time_total / iters for e in prof.key_averages()
            if e.self_device_time_total > 0 and e.device_type == torch.autograd.DeviceType.CUDA}
    return dict(sorted(rows.items(), key=lambda kv: -kv[1]))


def host_ms(fn, reps=10):
    """Host milliseconds per call without synchronizing (the GPU queue absorbs the launches)."""
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    host = (time.perf_counter() - t) / reps * 1e3
    torch.cuda.synchronize()
    return host


def trace(fn, out_dir, tag):
    """One call (after a sync, as each eager rep): kernels, runtime calls, the GPU's idle gaps inside the call."""
    fn()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        fn()
        torch.cuda.synchronize()
    path = os.path.join(out_dir, f"trace_{tag}.json")
    prof.export_chrome_trace(path)
    ev = json.load(open(path))["traceEvents"]
    kern = sorted((e for e in ev if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")), key=lambda e: e["ts"])
    rt = [e for e in ev if e.get("cat") == "cuda_runtime"]
    calls = {}
    for e in rt:
        calls[e["name"]] = calls.get(e["name"], 0) + 1
    first_cpu = min(e["ts"] for e in ev if e.get("cat") == "cpu_op")
    gaps = [(kern[0]["ts"] - first_cpu, "(host before the first kernel) " + kern[0]["name"][:50])]
    for a, b in zip(kern, kern[1:]):
        gaps.append((b["ts"] - (a["ts"] + a["dur"]), b["name"][:60]))
    span = kern[-1]["ts"] + kern[-1]["dur"] - kern[0]["ts"]
    busy = sum(e["dur"] for e in kern)
    return dict(kernels=len(kern), runtime_calls=calls, span_us=round(span, 1), busy_us=round(busy, 1),
                idle_in_call_us=round(span - busy, 1),
                top_gaps=[(round(g, 1), n) for g, n in sorted(gaps, key=lambda x: -x[0])[:8]])


def cast_host_us(reps=200):
    """Host microseconds per dtype copy of a B1 L8192 H32 dt (bf16 -> float32), no sync between them."""
    dt = torch.rand(1, 8192, 32, device="cuda", dtype=torch.bfloat16)
    dt.float()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        dt.float()
    us = (time.perf_counter() - t) / reps * 1e6
    torch.cuda.synchronize()
    print(f"-- host per dt.float(): {us:.1f} us", flush=True)


def case(B, L, name, env, out_dir, with_trace):
    from bench_cuda import time_ms
    from bench_ssd_cuda import fwd_bwd_fn, inputs
    import ssm.ops._kernels as kernels
    for k in ("SSM_SSD_BWD_SPLIT", "SSM_SSD_BWD_HEADSUM"):
        os.environ.pop(k, None)
    os.environ.update(env)
    t = inputs(B, L)
    if name == "dt32":
        t["dt"] = t["dt"].float()
    fb = fwd_bwd_fn(t)
    table = kernel_table(fb)
    row = dict(case=f"B{B} L{L}", form=name, poison=kernels.POISON_OUTPUTS, kernels_ms=sum(table.values()) / 1e3,
               eager_ms=time_ms(fb, reps=10), host_ms=host_ms(fb), top_us={k: round(v, 1) for k, v in table.items()})
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "top_us"}),
          flush=True)
    for k, v in list(table.items())[:6]:
        print(f"   {v:8.1f} us  {k}", flush=True)
    if with_trace:
        row["host_us"] = host_table(fb)
        print(f"-- host B{B} (self CPU us, count per call): {row['host_us']}", flush=True)
    if with_trace and os.environ.get("SSDBWD_TRACE") == "1":
        row["trace"] = trace(fb, out_dir, f"b{B}")
        t = row["trace"]
        print(f"-- trace B{B}: {t['kernels']} kernels, span {t['span_us']} us, idle {t['idle_in_call_us']} us, "
              f"runtime {t['runtime_calls']}", flush=True)
        print(f"-- gaps B{B}: {t['top_gaps'][:5]}", flush=True)
    return row


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    res = dict(device=torch.cuda.get_device_name(), rows=[])
    print(res["device"], flush=True)
    cast_host_us()
    parts = [(8, 2048, "default", False), (1, 8192, "default", True), (8, 2048, "dt32", False),
             (1, 8192, "dt32", True), (8, 2048, "nosplit", False), (1, 8192, "nosplit", False)]
    for B, L, name, tr in parts:
        try:
            res["rows"].append(case(B, L, name, FORMS[name], out_dir, tr))
        except Exception as e:  # a part's failure leaves the others
            print(f"-- B{B} L{L} {name} failed: {type(e).__name__}: {e}", flush=True)
        with open(os.path.join(out_dir, "time.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
