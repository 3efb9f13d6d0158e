"""Device round of engineer m1scan (session 10; issue 6: the Mamba-1 scan forward at prefill shapes), one process:
1. the scan forward in mamba_ssm's model layout (B 8, L 2048, N 16, bf16, z, D, dt_bias, softplus) at D 4096
   (mamba-1.4b) and D 1536 (mamba-130m), each kernel form forced by SSM_SCAN_ROWS in turn (default: the thread per
   channel kernel (w) at D 4096, the row kernel with one channel per thread at D 1536; 1 / 2: the row kernel with one /
   two channels per thread (2: the default before this session at D 4096)):
   kernel time (profiler) and event median (L2 flushed), y compared bit for bit with the default's;
2. mamba-1.4b and mamba-130m prefill (bench_models' rows: random bf16 weights, 8 x 2048, full logits): event
   median and kernel sum per form, the scan's kernel time per layer.
Each part is skipped once --budget seconds have passed. JSON to OUT/m1scan_round.json.

Usage: python benchmarks/device/m1scan_round.py OUT_DIR [--budget SECONDS]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "device"))
import ssm.ops as ops  # noqa: E402
from benchmarks.bench_cuda import time_ms  # noqa: E402
from benchmarks.bench_scan_layouts_cuda import kernels_by_time  # noqa: E402
from e2e_profile import VOCAB, event_ms, make_model, prefill_fn, profile  # noqa: E402
from scan_time import inputs  # noqa: E402
from ssm.ops import _kernels  # noqa: E402

START = time.perf_counter()
DEV = torch.device("cuda")
SCAN = ("fwd_rows_kernel", "fwd_wide_kernel", "fwd_block_kernel")
KERNEL_FORMS = [("model D4096", 4096, ["", "2", "", "2"]), ("model D1536", 1536, ["", "w"])]
MODEL_FORMS = [("mamba-1.4b", ["", "2", "", "2"]), ("mamba-130m", [""])]


def set_form(f: str) -> None:
    os.environ.pop("SSM_SCAN_ROWS", None)
    if f:
        os.environ["SSM_SCAN_ROWS"] = f


def left(budget: float) -> bool:
    return time.perf_counter() - START < budget


def kernels(budget: float, out: dict, path: Path) -> None:
    for label, D, forms in KERNEL_FORMS:
        args = inputs(8, D, 2048, 16, True)
        fwd = lambda: ops.selective_scan(*args[:7], args[7], True)
        base = None
        for f in forms:
            if not left(budget):
                return
            set_form(f)
            parts = kernels_by_time(fwd, iters=5)
            y = fwd()
            torch.cuda.synchronize()
            base = y if base is None else base
            r = dict(form=f or "default", kernel_ms=sum(t for t, k in parts if any(s in k for s in SCAN)),
                     event_ms=time_ms(fwd, reps=10), kernel=[k[:90] for t, k in parts if any(s in k for s in SCAN)][:1],
                     y_equal_default=bool(torch.equal(y, base)),
                     y_max_abs_diff=float((y.float() - base.float()).abs().max()))
            out["kernels"].setdefault(label, []).append(r)
            print(f"{label} form {r['form']:8s} kernel {r['kernel_ms'] * 1e3:7.1f} us  event {r['event_ms'] * 1e3:7.1f} us"
                  f"  y==default {r['y_equal_default']} (max diff {r['y_max_abs_diff']:.2e})  {r['kernel'][0][:60] if r['kernel'] else '-'}",
                  flush=True)
            path.write_text(json.dumps(out, indent=1))
        del args, base
    set_form("")


def models(budget: float, out: dict, odir: Path, path: Path) -> None:
    for name, forms in MODEL_FORMS:
        if not left(budget):
            return
        model = make_model(name)
        ids = torch.randint(0, VOCAB, (8, 2048), device=DEV)
        fn = prefill_fn(model, ids)
        seen = set()
        for f in forms:
            if not left(budget):
                break
            set_form(f)
            row = dict(model=name, form=f or "default", event_ms=event_ms(fn, 5))
            if f not in seen:
                prof = profile(fn, odir / f"kernels_{name}_prefill_{f or 'default'}.txt")
                scan = [(ms, name_) for ms, _, name_ in prof["top"] if any(s in name_ for s in SCAN)]
                row.update(kernels_ms=prof["kernels_ms"], scan_ms=scan[0][0] if scan else None)
                seen.add(f)
            out["models"].append(row)
            print(f"{name} prefill form {row['form']:8s} event {row['event_ms']:7.2f} ms"
                  + (f"  kernels {row['kernels_ms']:7.2f} ms  scan {row['scan_ms']:.2f} ms" if row.get("scan_ms") else ""),
                  flush=True)
            path.write_text(json.dumps(out, indent=1))
        set_form("")
        del model, fn
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--budget", type=float, default=30.0)
    a = ap.parse_args()
    odir = Path(a.out)
    odir.mkdir(parents=True, exist_ok=True)
    path = odir / "m1scan_round.json"
    _kernels.POISON_OUTPUTS = False
    out = dict(device=torch.cuda.get_device_name(), kernels={}, models=[])
    kernels(a.budget * 0.45, out, path)
    models(a.budget, out, odir, path)
    print(f"done at {time.perf_counter() - START:.1f} s", flush=True)


if __name__ == "__main__":
    main()
