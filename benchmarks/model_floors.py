"""Physical floors of the end-to-end CPU workloads of bench_models_cpu.py, measured in the same run:
the least time any implementation can take on this machine, and so the largest speed-up over
another implementation (transformers) that is physically reachable.

- machine limits: the best FLOP/s of torch matmuls at the models' shapes and at 2048^3 (float32,
  bfloat16), the FMA peak measured by a C loop of 12 independent 8-wide FMA chains (compiled here
  with the system's C compiler; per second of the thread's CPU time, the best of several runs: a
  rate the descheduling of a busy machine cannot lower, at the clock the core actually ran; the
  reported clock times 32 FLOP/cycle when no compiler is found), and the memory bandwidth of
  a large copy (read + write) and of a large read (a sum), by the wall clock and per CPU second;
- per workload: the FLOPs of the model's linear layers (in_proj, x_proj, dt_proj, out_proj of every
  layer, and lm_head on the tokens whose logits are computed) and the bytes of the weights, read at
  least once per forward (a decode step reads them all per token);
  floor = max(FLOPs / FLOP rate, bytes / bandwidth), at the highest rates measured in the run (best
  of several runs, or implied by the replay below), and with the ISA's theoretical FMA peak as the
  FLOP rate (a floor no load can lower: when transformers' time over it is below a target, no
  implementation can reach the target on this machine); every other part of the model (conv, scan,
  norms) only adds time, so each floor is a lower bound;
- the torch matmul time alone: the same linear layers replayed with torch at the workload's shapes,
  what both ssm and transformers pay when both run their linear layers through torch's matmul.
"""
from __future__ import annotations

import re
import statistics
import time

import torch
import torch.nn.functional as F

# fp32 FLOPs per cycle per core of two 256-bit FMA pipes (AVX2 + FMA: 2 x 8 lanes x 2)
FMA_FLOPS_PER_CYCLE = {"avx512": 64, "avx2": 32}

# 12 independent chains of 8-wide FMAs (more than latency x pipes = 4 x 2 on current x86 cores),
# held in registers: the loop runs at the FMA pipes' peak (the one memory access is the counter)
_FMA_LOOP_C = r"""
#include <immintrin.h>
float fma_loop(long n) {
  __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
#define I(k) __m256 a##k = _mm256_set1_ps((float)(k + 1));  /* distinct: no two chains merge */
  I(0) I(1) I(2) I(3) I(4) I(5) I(6) I(7) I(8) I(9) I(10) I(11)
  for (long i = 0; i < n; ++i) {
#define F(k) a##k = _mm256_fmadd_ps(a##k, m, c);
    F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9) F(10) F(11)
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                           _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
  s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
  return s[0];
}
"""
_FMA_LOOP_FLOPS = 12 * 8 * 2  # per iteration


def measured_fma_peak(reps: int = 5, iterations: int = 20_000_000) -> tuple[float | None, str]:
    """(fp32 GFLOP/s of one thread per second of its CPU time, how), from _FMA_LOOP_C; (None, why)
    when it cannot be compiled or loaded (no C compiler, not x86 with AVX2 + FMA)."""
    import ctypes
    import os
    import shutil
    import subprocess
    import tempfile
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None, "no C compiler"
    with tempfile.TemporaryDirectory() as d:
        src, lib = os.path.join(d, "fma.c"), os.path.join(d, "fma.so")
        open(src, "w").write(_FMA_LOOP_C)
        try:
            subprocess.run([cc, "-O2", "-mavx2", "-mfma", "-shared", "-fPIC", src, "-o", lib],
                           check=True, capture_output=True, timeout=60)
            fn = ctypes.CDLL(lib).fma_loop
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"the FMA loop did not build: {e}"
        fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_long]
        best = 0.0
        for _ in range(reps):
            t0 = time.thread_time()
            fn(iterations)
            best = max(best, iterations * _FMA_LOOP_FLOPS / (time.thread_time() - t0) / 1e9)
    return best, (f"measured: 12 chains of 8-wide FMAs ({cc} -O2 -mavx2 -mfma), best of {reps} runs, "
                  f"per second of thread CPU time")


def _times(fn, reps: int) -> list[float]:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _cpu_times(fn, reps: int) -> list[float]:
    """Seconds of the process's CPU time per call (all its threads)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return times


def _best_s(fn, reps: int) -> float:
    """The least time: the rate a limit is measured at is one this machine reached."""
    return min(_times(fn, reps))


def _clock_ghz() -> float | None:
    mhz = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", open("/proc/cpuinfo").read())]
    return max(mhz) / 1e3 if mhz else None


def machine_limits(isa: str | None, reps: int = 5) -> dict:
    """FLOP/s and bandwidth limits of this machine at torch's current thread count."""
    matmul = {}
    for name, dtype, m in (("float32", torch.float32, 2048), ("bfloat16", torch.bfloat16, 512)):
        best = 0.0  # (bfloat16 at 512 rows: without native bf16 FMAs it runs ~6x slower)
        for k, n in ((768, 3072), (1536, 768), (2048, 2048)):
            a, b = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype)
            best = max(best, 2 * m * k * n / _best_s(lambda: F.linear(a, b), reps) / 1e9)
        matmul[name] = best
    src = torch.randn(64 * 2**20)  # 256 MiB: far beyond the caches
    dst = torch.empty_like(src)
    nbytes = src.numel() * 4
    copy = 2 * nbytes / _best_s(lambda: dst.copy_(src), reps) / 1e9
    read = nbytes / _best_s(lambda: src.sum(), reps) / 1e9
    read_cpu = nbytes / min(_cpu_times(lambda: src.sum(), reps)) / 1e9
    threads = torch.get_num_threads()
    peak, how = measured_fma_peak()
    ghz = _clock_ghz()
    per_cycle = FMA_FLOPS_PER_CYCLE.get(isa or "", 32)
    if peak is None:  # the reported clock instead (a boost clock above it would raise the peak)
        peak, how = (per_cycle * ghz if ghz else None), f"{per_cycle} fp32 FLOP/cycle x {ghz} GHz (reported clock); {how}"
    return {"matmul_GFLOPs": matmul, "fma_peak_GFLOPs": None if peak is None else peak * threads,
            "fma_peak_per_cpu_s_GFLOPs": peak, "fma_peak_basis": f"{how}; x {threads} threads",
            "implied_clock_GHz": None if peak is None else peak / per_cycle, "reported_clock_GHz": ghz,
            "copy_GBps": copy, "read_GBps": read, "read_per_cpu_s_GBps": read_cpu, "threads": threads}


def _linears(model) -> tuple[list, torch.nn.Linear]:
    """The linear layers of the mixers (lm_head apart)."""
    head = model.lm_head
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head], head


def _weight_bytes(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():  # tied embedding / lm_head counted once
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def _shapes(workload: str) -> tuple[int, int, int, int]:
    """(rows through the mixers' linears, rows through lm_head, forwards, repeats of that) per workload."""
    kind, size = workload.split(" ")
    if kind == "prefill":
        batch, seqlen = (int(v) for v in size.split("x"))
        return batch * seqlen, batch, 1, 1
    batch = int(size[1:])
    return batch, batch, 1, 32  # decode: 32 steps of one token per row (bench_models_cpu's decode_fn)


def _replay(linears, head, rows: int, head_rows: int, dtype):
    inputs = [torch.randn(rows, m.in_features).to(dtype) for m in linears]
    head_in = torch.randn(head_rows, head.in_features).to(dtype)

    def run():
        for m, x in zip(linears, inputs):
            F.linear(x, m.weight, m.bias)
        F.linear(head_in, head.weight, head.bias)
    return run


def workload_floor(model, dtype, workload: str, limits: dict, reps: int = 3) -> dict:
    """The raw figures of one workload (its whole time, as bench_models_cpu's rows measure it): the
    linear layers' FLOPs, the weight bytes read, and the torch matmul time alone (median)."""
    linears, head = _linears(model)
    rows, head_rows, _, steps = _shapes(workload)
    flops = 2 * steps * (rows * sum(m.in_features * m.out_features for m in linears)
                         + head_rows * head.in_features * head.out_features)
    # a prefill's replay runs 1/8 of the rows (>= 256: matmul time stays linear in them), times 8
    scale = 8 if rows >= 2048 else 1
    with torch.no_grad():
        times = _times(_replay(linears, head, rows // scale, max(1, head_rows // scale), dtype), reps)
    return {"linear_GFLOP": flops / 1e9, "weight_GB_read": steps * _weight_bytes(model) / 1e9,
            "torch_matmul_s": steps * scale * statistics.median(times),
            "torch_matmul_note": f"replayed at 1/{scale} of the rows, x{scale}" if scale > 1
            else "replayed per step, x steps"}


def floors(raw: dict, limits: dict, observed_s: tuple = ()) -> dict:
    """Lower bounds on the workload's time: at the highest rates seen in this run (torch's best
    matmul, the replay's own, the best copy or read bandwidth, and the FLOP and byte rates the
    measured implementations themselves reached: ``observed_s``, so that a floor never exceeds a
    time measured on the same machine when the load changed between measurements) and with the
    FLOPs at the ISA's theoretical FMA peak instead (a rate no load can raise; no theoretical
    bandwidth is known)."""
    flops, nbytes = raw["linear_GFLOP"] * 1e9, raw["weight_GB_read"] * 1e9
    times = [raw["torch_matmul_s"], *(t for t in observed_s if t)]
    measured = max(max(limits["matmul_GFLOPs"].values()) * 1e9, *(flops / t for t in times))
    bandwidth = max(limits["copy_GBps"] * 1e9, limits["read_GBps"] * 1e9, *(nbytes / t for t in times))
    byte_s = nbytes / bandwidth
    out = {"byte_floor_s": byte_s, "flop_floor_measured_s": flops / measured,
           "floor_measured_s": max(flops / measured, byte_s)}
    if limits.get("fma_peak_GFLOPs"):
        peak = max(limits["fma_peak_GFLOPs"] * 1e9, measured)
        out.update(flop_floor_fma_peak_s=flops / peak, floor_fma_peak_s=max(flops / peak, byte_s))
    return out


def cpu_floor(raw: dict, limits: dict, observed_cpu_s: tuple = ()) -> dict:
    """The floor in CPU seconds (what the wall clock shows on an idle machine, with one thread):
    the linear layers' FLOPs at the FMA peak measured per CPU second, and the weight bytes at the
    best read rate per CPU second; each rate raised to what a measured implementation reached
    (``observed_cpu_s``), so the floor never exceeds a CPU time measured in the same run."""
    peak = limits.get("fma_peak_per_cpu_s_GFLOPs")
    if not peak:
        return {}
    flops, nbytes = raw["linear_GFLOP"] * 1e9, raw["weight_GB_read"] * 1e9
    seen = [t for t in observed_cpu_s if t]
    rate = max(peak * 1e9, *(flops / t for t in seen))
    bandwidth = max((limits.get("read_per_cpu_s_GBps") or 0) * 1e9, *(nbytes / t for t in seen), 1.0)
    return {"flop_floor_cpu_s": flops / rate, "byte_floor_cpu_s": nbytes / bandwidth,
            "floor_cpu_s": max(flops / rate, nbytes / bandwidth)}


TARGETS = {("mamba1", "prefill"): 20.0, ("mamba2", "prefill"): 3.0, ("mamba1", "decode b1"): 2.0,
           ("mamba2", "decode b1"): 2.0}


def target_of(model: str, workload: str) -> float | None:
    return TARGETS.get((model, workload)) or TARGETS.get((model, workload.split(" ")[0]))


def verdict(model: str, workload: str, raw: dict, limits: dict, hf_s: float | None, ssm_s: float | None,
            hf_cpu_s: float | None = None, ssm_cpu_s: float | None = None) -> dict:
    """transformers' time over the floors: the largest speed-up over it that any implementation can
    reach (at this run's measured rates; at the FMA peak) and any that runs torch's matmuls; and the
    same in CPU seconds (transformers' CPU time over the CPU-time floor: a bound the load of a
    shared machine cannot distort, as neither side is charged for the time others held the core)."""
    out = {**raw, **floors(raw, limits, (hf_s, ssm_s)), **cpu_floor(raw, limits, (hf_cpu_s, ssm_cpu_s)),
           "target_x_hf": target_of(model, workload)}
    if hf_s is None:
        return out
    if hf_cpu_s and "floor_cpu_s" in out:
        out.update(hf_cpu_s=hf_cpu_s, ssm_cpu_s=ssm_cpu_s, x_hf_cpu=hf_cpu_s / ssm_cpu_s if ssm_cpu_s else None,
                   max_x_hf_cpu=hf_cpu_s / out["floor_cpu_s"])
    out.update(hf_s=hf_s, ssm_s=ssm_s, x_hf=hf_s / ssm_s if ssm_s else None,
               max_x_hf_measured_rates=hf_s / out["floor_measured_s"],
               max_x_hf_torch_matmul=hf_s / raw["torch_matmul_s"])
    if "floor_fma_peak_s" in out:
        out["max_x_hf_fma_peak"] = hf_s / out["floor_fma_peak_s"]
    target = out["target_x_hf"]
    if target is not None:
        out["target_met"] = out["x_hf"] is not None and out["x_hf"] >= target
        # the GFLOP/s the linear layers alone would need for the target (FLOPs over hf_s / target)
        out["GFLOPs_needed_for_target"] = raw["linear_GFLOP"] * target / hf_s
        out["target_reachable_at_measured_rates"] = out["max_x_hf_measured_rates"] >= target
        out["target_reachable_with_torch_matmul"] = out["max_x_hf_torch_matmul"] >= target
        if "max_x_hf_fma_peak" in out:  # False: impossible for any implementation on this machine
            out["target_reachable_at_fma_peak"] = out["max_x_hf_fma_peak"] >= target
        if "max_x_hf_cpu" in out:  # the same in CPU seconds, at the measured FMA peak and read rate
            out["target_met_cpu"] = bool(out["x_hf_cpu"]) and out["x_hf_cpu"] >= target
            out["target_reachable_cpu"] = out["max_x_hf_cpu"] >= target
    return out


def label(f: dict) -> str:
    """One phrase for a verdict: met, or the tightest bound that rules the target out."""
    if f.get("target_x_hf") is None or "hf_s" not in f:
        return ""
    head = f"{f['target_x_hf']:.0f}x: "
    if f["target_met"] and f.get("target_met_cpu", True):
        return head + "met"
    if f["target_met"]:
        return head + f"met on the wall clock, not in CPU seconds ({f['x_hf_cpu']:.1f}x)"
    if f.get("target_met_cpu"):
        return head + f"met in CPU seconds ({f['x_hf_cpu']:.1f}x), not on the wall clock"
    if not f.get("target_reachable_cpu", True):
        return head + "impossible on this machine (CPU seconds at the measured FMA peak / read rate)"
    if not f.get("target_reachable_at_fma_peak", True):
        return head + "impossible on this machine (even at the FMA peak)"
    if not f["target_reachable_at_measured_rates"]:
        return head + "not reachable at this run's measured rates"
    if not f["target_reachable_with_torch_matmul"]:
        return head + "not reachable with torch's matmuls"
    return head + "reachable, not reached"
