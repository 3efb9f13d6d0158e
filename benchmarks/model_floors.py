"""Physical floors of the end-to-end CPU workloads of bench_models_cpu.py, measured in the same run:
the least time any implementation can take on this machine, and so the largest speed-up over
another implementation (transformers) that is physically reachable.

- machine limits: the best FLOP/s of torch matmuls at the models' shapes and at 2048^3 (float32,
  bfloat16), the theoretical FMA peak of the ISA at the reported clock, and the memory bandwidth of
  a large copy (read + write) and of a large read (a sum);
- per workload: the FLOPs of the model's linear layers (in_proj, x_proj, dt_proj, out_proj of every
  layer, and lm_head on the tokens whose logits are computed) and the bytes of the weights, read at
  least once per forward (a decode step reads them all per token);
  floor = max(FLOPs / the highest FLOP/s, bytes / the highest bandwidth), the highest of the rates
  measured (best of several runs), theoretical, or implied by the replay below;
  every other part of the model (conv, scan, norms) only adds time, so the floor is a lower bound;
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
    """Floor of one workload (its whole time, as bench_models_cpu's rows measure it)."""
    linears, head = _linears(model)
    rows, head_rows, _, steps = _shapes(workload)
    flops = 2 * steps * (rows * sum(m.in_features * m.out_features for m in linears)
                         + head_rows * head.in_features * head.out_features)
    nbytes = steps * _weight_bytes(model)
    # a prefill's replay runs 1/8 of the rows (>= 256: matmul time stays linear in them), times 8
    scale = 8 if rows >= 2048 else 1
    with torch.no_grad():
        times = _times(_replay(linears, head, rows // scale, max(1, head_rows // scale), dtype), reps)
    matmul_s = steps * scale * statistics.median(times)
    # the highest rates seen in this run, the replay's own included (a floor must not overestimate)
    best_replay_s = steps * scale * min(times)
    peak = max([*limits["matmul_GFLOPs"].values(), limits["fma_peak_GFLOPs"] or 0.0]) * 1e9
    peak = max(peak, flops / best_replay_s)
    replay_GBps = nbytes / best_replay_s / 1e9 if scale == 1 else 0.0  # (full-size replays only)
    bandwidth = max(limits["copy_GBps"], limits["read_GBps"], replay_GBps) * 1e9
    return {"peak_GFLOPs_used": peak / 1e9, "GBps_used": bandwidth / 1e9,"linear_GFLOP": flops / 1e9, "weight_GB_read": nbytes / 1e9, "flop_floor_s": flops / peak,
            "byte_floor_s": nbytes / bandwidth, "floor_s": max(flops / peak, nbytes / bandwidth),
            "torch_matmul_s": matmul_s, "torch_matmul_note": f"replayed at 1/{scale} of the rows, x{scale}"
            if scale > 1 else "replayed at full size (per step, x steps)"}


TARGETS = {("mamba1", "prefill"): 20.0, ("mamba2", "prefill"): 3.0, ("mamba1", "decode b1"): 2.0,
           ("mamba2", "decode b1"): 2.0}


def target_of(model: str, workload: str) -> float | None:
    return TARGETS.get((model, workload)) or TARGETS.get((model, workload.split(" ")[0]))


def verdict(model: str, workload: str, floor: dict, hf_s: float | None, ssm_s: float | None) -> dict:
    """transformers' time over the floors: the largest speed-up over it that any implementation
    (floor_s) or any implementation with torch's matmuls (torch_matmul_s) can reach."""
    out = dict(floor)
    target = target_of(model, workload)
    out["target_x_hf"] = target
    if hf_s is None:
        return out
    out["hf_s"], out["ssm_s"] = hf_s, ssm_s
    out["x_hf"] = hf_s / ssm_s if ssm_s else None
    out["max_x_hf_any"] = hf_s / floor["floor_s"]
    out["max_x_hf_torch_matmul"] = hf_s / floor["torch_matmul_s"]
    if target is not None:
        out["target_physically_possible"] = out["max_x_hf_any"] >= target
    return out
