"""Selective scan (Mamba-1) and its decode step on the CPU: the reference path vs the C++ kernel.

Both paths run through the public ops (``SSM_BACKEND=reference`` / ``cpu``), side by side in one
process. Times are medians of repeated runs. The reference path runs on one torch thread: its
many small per-step ops are fastest there (with 2 OpenMP threads on a busy 2-core machine they
were ~10x slower); the kernel runs with torch's thread count and with one thread, and the table
gives both ratios. The reference backward grows faster than L (each per-step slice's gradient is
a full-size tensor), so by default its forward+backward is timed at L 512 only; the L 2048 row
then gives the kernel times alone. Prints a table and writes JSON (machine, versions, threads, shapes, dtype,
times, speedups, and the kernel's share of the machine's copy bandwidth).

    python benchmarks/bench_selective_scan.py [--repeats 5] [--ref-repeats 1] [--lengths 512 2048]
        [--modes fwd fwd+bwd] [--dtypes fp32 bf16] [--ref-max-len L] [--no-step] [--out PATH]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import ssm.ops as ops  # noqa: E402
from ssm.utils import dispatch  # noqa: E402

D, N = 1536, 16
SCAN_LENGTHS = (512, 2048)
STEP_BATCHES = (1, 16)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@contextlib.contextmanager
def backend(name: str):
    old = os.environ.get("SSM_BACKEND")
    os.environ["SSM_BACKEND"] = name
    try:
        yield
    finally:
        os.environ.pop("SSM_BACKEND") if old is None else os.environ.__setitem__("SSM_BACKEND", old)


@contextlib.contextmanager
def threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def median_time(fn, repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def scan_inputs(L: int, dtype: torch.dtype, grad: bool):
    """Mamba-1 mixer shapes: B 1, variable B/C shared by all channels, z, D, dt_bias, softplus."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(dt).requires_grad_(grad)
    u, delta, z = rnd(1, D, L), rnd(1, D, L, scale=0.5), rnd(1, D, L)
    A = (-torch.exp(torch.randn(D, N, generator=g) * 0.5)).requires_grad_(grad)
    return (u, delta, A, rnd(1, N, L), rnd(1, N, L), rnd(D, dt=torch.float32), z, rnd(D, scale=0.3, dt=torch.float32))


def scan_case(path: str, L: int, dtype: torch.dtype, mode: str, repeats: int, nthreads: int) -> float:
    args = scan_inputs(L, dtype, grad=mode == "fwd+bwd")

    def run():
        y = ops.selective_scan(*args, softplus=True)
        if mode == "fwd+bwd":
            y.backward(torch.ones_like(y))
    with backend(path), threads(nthreads), torch.set_grad_enabled(mode == "fwd+bwd"):
        return median_time(run, repeats, warmup=path != "reference")


def step_case(path: str, batch: int, dtype: torch.dtype, repeats: int, nthreads: int) -> float:
    g = torch.Generator().manual_seed(0)
    state = torch.randn(batch, D, N, generator=g).to(dtype)
    x, dt, z = (torch.randn(batch, D, generator=g).to(dtype) for _ in range(3))
    A, Dp, bias = -torch.rand(D, N, generator=g), torch.randn(D, generator=g), torch.randn(D, generator=g)
    B, C = (torch.randn(batch, N, generator=g).to(dtype) for _ in range(2))

    def run():
        for _ in range(100):
            ops.selective_state_step(state, x, dt, A, B, C, Dp, z, bias, True)
    with backend(path), threads(nthreads), torch.no_grad():
        return median_time(run, repeats) / 100


def machine() -> dict:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    src = torch.empty(64 * 2**20 // 4)
    dst = torch.empty_like(src)
    copy_s = median_time(lambda: dst.copy_(src), 5)
    a = torch.randn(1024, 1024)
    mm_s = median_time(lambda: a @ a, 5)
    return {"cpu": model, "logical_cpus": os.cpu_count(), "load_avg_start": list(os.getloadavg()),
            "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "isa": dispatch.cpu_module().active_isa(),
            "copy_GBps": 2 * src.numel() * 4 / copy_s / 1e9, "matmul_fp32_GFLOPs": 2 * 1024**3 / mm_s / 1e9}


def scan_bytes(L: int, dtype: torch.dtype, mode: str) -> int:
    """Bytes a forward touches at least: u, delta, z, B, C in, y out (x3 for forward+backward)."""
    size = torch.finfo(dtype).bits // 8
    return (4 * D * L + 2 * N * L) * size * (3 if mode == "fwd+bwd" else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of the kernel path (median)")
    ap.add_argument("--ref-repeats", type=int, default=1, help="timed runs of the reference path (median)")
    ap.add_argument("--ref-bwd-max-len", type=int, default=512,
                    help="longest L at which the reference forward+backward is timed")
    ap.add_argument("--ref-max-len", type=int, default=1 << 30, help="longest L at which the reference is timed")
    ap.add_argument("--lengths", type=int, nargs="+", default=list(SCAN_LENGTHS))
    ap.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--no-step", action="store_true", help="skip the decode step rows")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu/selective_scan.json"))
    args = ap.parse_args()
    info = machine()
    nt = info["threads"]
    rows = []
    for mode in args.modes:
        for name in args.dtypes:
            dtype = DTYPES[name]
            for L in args.lengths:
                skip_ref = L > args.ref_max_len or (mode == "fwd+bwd" and L > args.ref_bwd_max_len)
                ref = None if skip_ref else scan_case("reference", L, dtype, mode, args.ref_repeats, 1)
                cpu = scan_case("cpu", L, dtype, mode, args.repeats, nt)
                cpu1 = scan_case("cpu", L, dtype, mode, args.repeats, 1)
                rows.append(row("selective_scan", mode, name, f"B1 D{D} L{L} N{N}", ref, cpu, cpu1, nt))
                rows[-1]["cpu_copy_bw_fraction"] = scan_bytes(L, dtype, mode) / cpu / 1e9 / info["copy_GBps"]
    for batch in () if args.no_step else STEP_BATCHES:
        ref = step_case("reference", batch, torch.float32, args.repeats, 1)
        cpu = step_case("cpu", batch, torch.float32, args.repeats, nt)
        cpu1 = step_case("cpu", batch, torch.float32, args.repeats, 1)
        rows.append(row("selective_state_step", "step", "fp32", f"B{batch} D{D} N{N}", ref, cpu, cpu1, nt))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    info["load_avg_end"] = list(os.getloadavg())
    info["thp_mem_alloc"] = os.environ.get("THP_MEM_ALLOC_ENABLE")
    Path(args.out).write_text(json.dumps({"machine": info, "results": rows}, indent=2) + "\n")
    print(f"machine: {info}\nwritten: {args.out}")


def row(op, mode, dtype, shape, ref, cpu, cpu1, nt) -> dict:
    """One result; ref is None where the reference was not timed."""
    r = {"op": op, "mode": mode, "dtype": dtype, "shape": shape,
         "reference_ms_1thread": None if ref is None else ref * 1e3, f"cpu_ms_{nt}threads": cpu * 1e3,
         "cpu_ms_1thread": cpu1 * 1e3, "speedup": None if ref is None else ref / cpu,
         "speedup_1thread": None if ref is None else ref / cpu1}
    ref_s = f"{'not run':>12}" if ref is None else f"{ref * 1e3:>12.2f}"
    ratios = f"{'-':>10}{'-':>10}" if ref is None else f"{ref / cpu:>9.1f}x{ref / cpu1:>9.1f}x"
    print(f"{op:<22}{mode:<9}{dtype:<6}{shape:<22}{ref_s}{cpu * 1e3:>10.3f}{cpu1 * 1e3:>10.3f}{ratios}", flush=True)
    return r


def print_header():
    print(f"{'op':<22}{'mode':<9}{'dtype':<6}{'shape':<22}{'ref ms 1t':>12}{'cpu ms':>10}{'cpu 1t':>10}"
          f"{'speedup':>10}{'1t ratio':>10}")


if __name__ == "__main__":
    print_header()
    main()
