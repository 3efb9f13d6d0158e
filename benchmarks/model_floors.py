"""Physical floors of the end-to-end CPU workloads of bench_models_cpu.py, measured in the same run:
the least time any implementation can take on this machine, and so the largest speed-up over
another implementation (transformers) that is physically reachable.

- machine limits: the best FLOP/s of torch matmuls at the models' shapes and at 2048^3 (float32,
  bfloat16), the theoretical FMA peak of the ISA at the reported clock, and the memory bandwidth of
  a large copy (read + write) and of a large read (a sum);
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


def _times(fn, reps: int) -> list[float]:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
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
    ghz = _clock_ghz()
    per_cycle = FMA_FLOPS_PER_CYCLE.get(isa or "", 32)
    theory = per_cycle * ghz * torch.get_num_threads() if ghz else None
    return {"matmul_GFLOPs": matmul, "fma_peak_GFLOPs": theory, "fma_peak_basis":
            f"{per_cycle} fp32 FLOP/cycle x {ghz} GHz (reported clock) x {torch.get_num_threads()} threads",
            "copy_GBps": copy, "read_GBps": read, "threads": torch.get_num_threads()}


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


TARGETS = {("mamba1", "prefill"): 20.0, ("mamba2", "prefill"): 3.0, ("mamba1", "decode b1"): 2.0,
           ("mamba2", "decode b1"): 2.0}


def target_of(model: str, workload: str) -> float | None:
    return TARGETS.get((model, workload)) or TARGETS.get((model, workload.split(" ")[0]))


def verdict(model: str, workload: str, raw: dict, limits: dict, hf_s: float | None, ssm_s: float | None) -> dict:
    """transformers' time over the floors: the largest speed-up over it that any implementation can
    reach (at this run's measured rates; at the FMA peak) and any that runs torch's matmuls."""
    out = {**raw, **floors(raw, limits, (hf_s, ssm_s)), "target_x_hf": target_of(model, workload)}
    if hf_s is None:
        return out
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
    return out


def label(f: dict) -> str:
    """One phrase for a verdict: met, or the tightest bound that rules the target out."""
    if f.get("target_x_hf") is None or "hf_s" not in f:
        return ""
    head = f"{f['target_x_hf']:.0f}x: "
    if f["target_met"]:
        return head + "met"
    if not f.get("target_reachable_at_fma_peak", True):
        return head + "impossible on this machine (even at the FMA peak)"
    if not f["target_reachable_at_measured_rates"]:
        return head + "not reachable at this run's measured rates"
    if not f["target_reachable_with_torch_matmul"]:
        return head + "not reachable with torch's matmuls"
    return head + "reachable, not reached"
