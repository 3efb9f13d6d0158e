"""Mamba-1 bf16 prefill of 8 x 512 tokens (mamba-130m shape, random weights, last-token logits), torch 1
thread, in one process: `ssm` with its products through the C++ GEMM (cpu_matmul.GEMM = "ssm") and through
torch's widened float32 GEMM ("torch"), alternating, and Hugging Face transformers on the same weights once
between the pairs. Process CPU seconds (the figures to compare on this shared machine) and wall seconds,
load average before and after each run; medians of the ssm forms.

Usage: python benchmarks/prefill_gemm_cpu.py [--pairs-before 2] [--pairs-after 1] [--no-hf] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_models_cpu import clocks, logits_agree, make_hf, make_ssm, prefill_fn  # noqa: E402
from ssm.ops import cpu_matmul  # noqa: E402


def run_once(label, run, rows):
    load0 = os.getloadavg()[0]
    wall, cpu = clocks(run)
    rows.append({"form": label, "cpu_s": cpu, "wall_s": wall, "load_before": load0, "load_after": os.getloadavg()[0]})
    print(f"{label:10s} {cpu:8.2f} CPU s {wall:8.2f} wall s  load {load0:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)


def ssm_pair(run, rows):
    for form in ("ssm", "torch"):
        cpu_matmul.GEMM = form
        run_once(f"ssm/{form}", run, rows)
    cpu_matmul.GEMM = "ssm"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs-before", type=int, default=2)
    ap.add_argument("--pairs-after", type=int, default=1)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu/prefill_gemm_s7.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = make_ssm("mamba1")
    hf, note = (None, "not requested") if args.no_hf else make_hf(model)
    check = logits_agree(model, hf) if hf is not None else None
    print("hf:", note, check, flush=True)
    run, _ = prefill_fn("ssm", model.to(torch.bfloat16), 8, 512)
    run(8)  # warm-up at 1/8
    rows = []
    for _ in range(args.pairs_before):
        ssm_pair(run, rows)
    if hf is not None and check["agree"]:
        hf_run, _ = prefill_fn("hf", hf.to(torch.bfloat16), 8, 512)
        run_once("hf", hf_run, rows)
    for _ in range(args.pairs_after):
        ssm_pair(run, rows)
    summary = {f: statistics.median(r["cpu_s"] for r in rows if r["form"] == f)
               for f in ("ssm/ssm", "ssm/torch", "hf") if any(r["form"] == f for r in rows)}
    if "hf" in summary:
        summary.update({f"x_hf_{f}": summary["hf"] / summary[f] for f in ("ssm/ssm", "ssm/torch")})
    print(json.dumps(summary, indent=1))
    Path(args.out).write_text(json.dumps({"hf": note, "hf_check": check, "threads": 1, "rows": rows,
                                          "median_cpu_s": summary}, indent=1))


if __name__ == "__main__":
    main()
