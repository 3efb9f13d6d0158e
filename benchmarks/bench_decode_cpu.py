"""Decode at batch 1 on the CPU, ssm against Hugging Face transformers on the same weights, measured
in alternation in one process (a shared machine's load then falls on every path alike):

- ssm: MambaLMHeadModel.generate (a step through the CPU stack plan, ssm.models.cpu_decode: one C++ call
  per Mamba-1 block, six prepared kernel calls per Mamba-2 block);
- ssm, per block: the same with the stack plan off (ssm.ops.mamba1_block_decode.ENABLED = False): each
  block's step through its ops (session 4's path: the decode projections through the small-batch kernel,
  Mamba-1's conv update .. state step in one C++ call);
- ssm, torch matmuls (--all): the per-block path with the small-batch kernel off too (norm_gemv.PLAIN = False);
- transformers: MambaForCausalLM / Mamba2ForCausalLM.generate, greedy;
- weights read: one pass over every weight a step reads (a sum per tensor): the floor of a step.

Per-token time = (generate(1 + n) - the least of two generate(1)) / n, on the wall clock and in the
process's CPU seconds (which a busy machine does not inflate by the time others held the core).
Prints medians and ratios and writes JSON to benchmarks/results/cpu/decode.json.
Usage: python benchmarks/bench_decode_cpu.py [--models mamba1,mamba2] [--dtypes float32] [--reps 5] [--steps 16] [--all]
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
import bench_models_cpu as bm  # noqa: E402
from bench_norm_conv import machine_info  # noqa: E402
from ssm.ops import mamba1_block_decode, norm_gemv  # noqa: E402


def step_seconds(impl, model, ids, steps) -> tuple[float, float]:
    """(wall, CPU) seconds of one decode step."""
    def gen(n):
        with torch.no_grad():
            bm.generate(impl, model, ids, n)
    base = [bm.clocks(lambda: gen(1)) for _ in range(2)]
    full = bm.clocks(lambda: gen(1 + steps))
    return tuple((f - min(b[i] for b in base)) / steps for i, f in enumerate(full))


def with_plain(value, fn):
    def run():
        norm_gemv.PLAIN = value
        try:
            return fn()
        finally:
            norm_gemv.PLAIN = True
    return run


def with_stack_plan(value, fn):
    def run():
        mamba1_block_decode.ENABLED = value
        try:
            return fn()
        finally:
            mamba1_block_decode.ENABLED = True
    return run


def measure(kind: str, dtype: torch.dtype, reps: int, steps: int, everything: bool = False) -> dict:
    model = bm.make_ssm(kind)
    hf, note = bm.make_hf(model)
    model, hf = model.to(dtype), hf.to(dtype)
    weights = [p for n, p in model.named_parameters() if p.dim() == 2 and "embedding" not in n] + [model.lm_head.weight]
    ids = torch.randint(0, bm.VOCAB, (1, bm.PROMPT))

    def read_all():
        for w in weights:
            w.sum()
    paths = {"ssm": lambda: step_seconds("ssm", model, ids, steps),
             "ssm_per_block": with_stack_plan(False, lambda: step_seconds("ssm", model, ids, steps)),
             "hf": lambda: step_seconds("hf", hf, ids, steps),
             "weights_read": lambda: min((bm.clocks(read_all) for _ in range(3)), key=lambda p: p[0])}
    if everything:
        paths["ssm_torch_matmuls"] = with_stack_plan(False, with_plain(False, lambda: step_seconds("ssm", model, ids,
                                                                                                    steps)))
    for fn in paths.values():
        fn()  # warm-up
    runs = {k: [] for k in paths}
    for _ in range(reps):
        for k, fn in paths.items():
            runs[k].append(fn())
    med = {k: {"wall_ms": 1e3 * statistics.median(p[0] for p in v), "cpu_ms": 1e3 * statistics.median(p[1] for p in v)}
           for k, v in runs.items()}
    ratios = {clock: {f"hf_over_{k}": med["hf"][clock] / med[k][clock] for k in med if k != "hf"}
              for clock in ("wall_ms", "cpu_ms")}
    return {"model": kind, "dtype": str(dtype).replace("torch.", ""), "hf": note, "reps": reps, "steps": steps,
            "weight_MB": sum(w.numel() * w.element_size() for w in weights) / 1e6, "median": med, "ratios": ratios,
            "runs_wall_cpu_s": runs, "load_avg_end": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="mamba1,mamba2")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--all", action="store_true", help="also the per-block path with torch's matmuls")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu/decode.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_info()
    print(f"{machine['cpu']}, torch {machine['torch']} ({args.threads} threads), load avg {machine['load_avg']}")
    rows = []
    for kind in args.models.split(","):
        for dname in args.dtypes.split(","):
            r = measure(kind, bm.DTYPES[dname], args.reps, args.steps, args.all)
            rows.append(r)
            for k, v in r["median"].items():
                print(f"{kind} {dname} {k:18s} {v['wall_ms']:8.1f} ms wall {v['cpu_ms']:8.1f} ms CPU per token")
            for clock, rs in r["ratios"].items():
                print(f"  {clock}: " + ", ".join(f"{k} {v:.2f}x" for k, v in rs.items()), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {**machine, "load_avg_end": os.getloadavg()}, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
