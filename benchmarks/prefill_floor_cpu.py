"""The measured floor of a Mamba-1 bf16 prefill on this CPU (mamba-130m shape, 8 x 512 tokens, last-token
logits), in thread CPU seconds, torch 1 thread: what no implementation built from this machine's best
measured pieces can go below, and so the largest speed-up over transformers' measured CPU time.

- products: the 24 layers' in_proj, x_proj, dt_proj and out_proj at their exact shapes (4096 tokens), each
  at the best rate any of torch's float32 GEMM forms reached on it here (F.linear, W @ X^T as the model
  runs it, X @ W^T with W^T stored, MKL's packed weights; best of --reps, operands already float32: the
  widening of bf16 operands and the rounding of products are left out, i.e. free), and the FMA peak of
  model_floors for comparison;
- scan: 24 x 4096 x 1536 x 16 state updates, each h = exp(dt A) h + dt u B and y += C h, at the rate of
  that recurrence alone on data in L1 (a C loop compiled at run time: 8 channels a vector, the 16 states in
  registers, the scan kernel's degree-6 exp2 polynomial; no loads of inputs, no conversions, no softplus,
  no gating), best of --reps;
- everything else (conv, norms, casts, copies, Python) counted as zero.

Prints the floor and, with --hf-cpu-s (transformers' CPU seconds from the same run of
bench_models_cpu.py), the largest reachable ratio; writes JSON (--out).

Usage: python benchmarks/prefill_floor_cpu.py [--reps 5] [--hf-cpu-s 178.4] [--out PATH]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_floors  # noqa: E402

TOKENS, LAYERS, D_MODEL, D_INNER, N, RANK = 8 * 512, 24, 768, 1536, 16, 48
# name -> (K, N_out) of x (TOKENS, K) @ W^T (K, N_out)
PRODUCTS = {"in_proj": (D_MODEL, 2 * D_INNER), "x_proj": (D_INNER, RANK + 2 * N), "dt_proj": (RANK, D_INNER),
            "out_proj": (D_INNER, D_MODEL)}

_SCAN_C = r"""
#include <immintrin.h>
static inline __m256 exp2v(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-126.f)), _mm256_set1_ps(126.f));
  const __m256 magic = _mm256_set1_ps(12582912.f);
  __m256 r = _mm256_add_ps(x, magic);
  __m256 f = _mm256_sub_ps(x, _mm256_sub_ps(r, magic));
  __m256i k = _mm256_sub_epi32(_mm256_castps_si256(r), _mm256_castps_si256(magic));
  __m256 p = _mm256_set1_ps(1.5403530e-4f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3333558e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6181291e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5504109e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022651e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f));
  return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23)));
}
/* steps of one vector of 8 channels with its 16 states in registers; dt, dt*u: (T, 8); A2: (16, 8);
   B, C: (T, 16); y: (T, 8) */
void scan_steps(long T, const float* dt, const float* du, const float* A2, const float* B, const float* C,
                float* y, float* hout) {
  __m256 h[16];
  for (int n = 0; n < 16; ++n) h[n] = _mm256_setzero_ps();
  for (long t = 0; t < T; ++t) {
    __m256 dtv = _mm256_loadu_ps(dt + 8 * t), duv = _mm256_loadu_ps(du + 8 * t);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
#pragma GCC unroll 16
    for (int n = 0; n < 16; n += 2) {
      __m256 a0 = exp2v(_mm256_mul_ps(dtv, _mm256_loadu_ps(A2 + 8 * n)));
      __m256 a1 = exp2v(_mm256_mul_ps(dtv, _mm256_loadu_ps(A2 + 8 * n + 8)));
      h[n] = _mm256_fmadd_ps(a0, h[n], _mm256_mul_ps(duv, _mm256_broadcast_ss(B + 16 * t + n)));
      h[n + 1] = _mm256_fmadd_ps(a1, h[n + 1], _mm256_mul_ps(duv, _mm256_broadcast_ss(B + 16 * t + n + 1)));
      acc0 = _mm256_fmadd_ps(h[n], _mm256_broadcast_ss(C + 16 * t + n), acc0);
      acc1 = _mm256_fmadd_ps(h[n + 1], _mm256_broadcast_ss(C + 16 * t + n + 1), acc1);
    }
    _mm256_storeu_ps(y + 8 * t, _mm256_add_ps(acc0, acc1));
  }
  for (int n = 0; n < 16; ++n) _mm256_storeu_ps(hout + 8 * n, h[n]);
}
"""


def best_cpu_s(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best


def gemm_forms(k: int, n: int) -> dict:
    """torch's float32 GEMM forms of x (TOKENS, k) @ W^T, W (n, k)."""
    w, x = torch.randn(n, k), torch.randn(TOKENS, k)
    wt, xt = w.t().contiguous(), x.t().contiguous()
    forms = {"F.linear(x, W)": lambda: F.linear(x, w), "W @ x^T (as the model)": lambda: torch.mm(w, xt),
             "x @ W^T stored": lambda: torch.mm(x, wt)}
    try:
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w, TOKENS)
        forms["MKL packed weights"] = lambda: torch.ops.mkl._mkl_linear(x, packed, w, None, TOKENS)
    except (AttributeError, RuntimeError) as e:
        print(f"MKL packed weights unavailable: {e}")
    return forms


def products(reps: int) -> dict:
    out = {}
    for name, (k, n) in PRODUCTS.items():
        flop = 2 * TOKENS * k * n
        rates = {form: flop / best_cpu_s(fn, reps) / 1e9 for form, fn in gemm_forms(k, n).items()}
        best = max(rates, key=rates.get)
        out[name] = {"gflop_per_layer": flop / 1e9, "gflop_per_cpu_s": rates, "best_form": best,
                     "cpu_s_24_layers": LAYERS * flop / (rates[best] * 1e9)}
        print(f"{name:9s} " + "  ".join(f"{f}: {r:.1f}" for f, r in rates.items()) + " GFLOP/CPU-s")
    return out


def scan(reps: int, steps: int = 4096) -> dict:
    """ns per state update of the recurrence alone (the C loop), best of reps; (None, why) without cc."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return {"skipped": "no C compiler"}
    with tempfile.TemporaryDirectory() as d:
        src, lib = os.path.join(d, "scan.c"), os.path.join(d, "scan.so")
        Path(src).write_text(_SCAN_C)
        subprocess.run([cc, "-O3", "-mavx2", "-mfma", "-shared", "-fPIC", src, "-o", lib], check=True,
                       capture_output=True, timeout=120)
        fn = ctypes.CDLL(lib).scan_steps
        bufs = [torch.rand(steps, 8) * 0.1, torch.rand(steps, 8), -torch.rand(16, 8) * 20, torch.randn(steps, 16),
                torch.randn(steps, 16), torch.empty(steps, 8), torch.empty(16, 8)]
        ptrs = [ctypes.c_void_p(b.data_ptr()) for b in bufs]
        per_call = best_cpu_s(lambda: [fn(ctypes.c_long(steps), *ptrs) for _ in range(50)], reps) / 50
    ns = per_call / (steps * 8 * N) * 1e9
    updates = LAYERS * TOKENS * D_INNER * N
    return {"ns_per_update": ns, "updates": updates, "cpu_s": updates * ns * 1e-9,
            "how": f"{cc} -O3 -mavx2 -mfma, 16 states of 8 channels in registers, {steps} steps, best of {reps}"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--hf-cpu-s", type=float, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = [os.getloadavg()]
    peak, how = model_floors.measured_fma_peak()
    prods = products(args.reps)
    sc = scan(args.reps)
    load.append(os.getloadavg())
    flop = LAYERS * sum(p["gflop_per_layer"] for p in prods.values())
    prod_s = sum(p["cpu_s_24_layers"] for p in prods.values())
    floor = prod_s + sc.get("cpu_s", 0.0)
    print(f"FMA peak {peak:.1f} GFLOP/CPU-s: products {flop:.0f} GFLOP = {flop / peak:.2f} CPU s at the peak")
    print(f"products at the best rate reached per shape: {prod_s:.2f} CPU s ({flop / prod_s:.1f} GFLOP/CPU-s)")
    if "cpu_s" in sc:
        print(f"scan recurrence alone: {sc['ns_per_update']:.3f} ns/update x {sc['updates'] / 1e9:.2f} G "
              f"= {sc['cpu_s']:.2f} CPU s")
    print(f"floor: {floor:.2f} CPU s; load average {load[0][0]:.1f} -> {load[1][0]:.1f}")
    result = {"tokens": TOKENS, "layers": LAYERS, "fma_peak_gflop_per_cpu_s": peak, "fma_how": how,
              "products": prods, "products_gflop": flop, "products_cpu_s": prod_s, "scan": sc, "floor_cpu_s": floor,
              "load_avg": load}
    if args.hf_cpu_s:
        result["hf_cpu_s"] = args.hf_cpu_s
        result["max_ratio"] = args.hf_cpu_s / floor
        print(f"transformers {args.hf_cpu_s:.1f} CPU s / floor = at most {args.hf_cpu_s / floor:.1f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
