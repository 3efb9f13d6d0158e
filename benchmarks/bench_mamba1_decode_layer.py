"""The Mamba-1 decode layer with and without the one-call CPU kernel (ssm.ops.mamba1_decode), inside
MambaLMHeadModel.generate (mamba-130m shape, random weights, batch 1, torch 1 thread), alternating in one
process: the thread CPU time of Mamba1._step_projected (conv update .. state step, plus out_proj, the same
in both) and of a whole decode step, per token, median over rounds. Both run the per-block path (the
stack plan of ssm.models.cpu_decode, which bypasses _step_projected, is turned off here).
Usage: python benchmarks/bench_mamba1_decode_layer.py [--rounds 8] [--steps 16] [--dtypes float32,bfloat16]"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_models_cpu as bm  # noqa: E402
from ssm.modules.mamba1 import Mamba1  # noqa: E402
from ssm.ops import mamba1_block_decode, mamba1_decode  # noqa: E402

_spent = [0.0]


def timed_step_projected():
    inner = Mamba1._step_projected

    def step(self, *args):
        t0 = time.thread_time()
        out = inner(self, *args)
        _spent[0] += time.thread_time() - t0
        return out
    Mamba1._step_projected = step


def round_ms(model, ids, steps, enabled) -> tuple[float, float]:
    """(layer part, whole step) thread CPU ms per token."""
    mamba1_decode.ENABLED = enabled
    with torch.no_grad():
        bm.generate("ssm", model, ids, 1)
        _spent[0], t0 = 0.0, time.thread_time()
        bm.generate("ssm", model, ids, 1)
        base_layer, base = _spent[0], time.thread_time() - t0
        _spent[0], t0 = 0.0, time.thread_time()
        bm.generate("ssm", model, ids, 1 + steps)
        layer, whole = _spent[0], time.thread_time() - t0
    mamba1_decode.ENABLED = True
    return 1e3 * (layer - base_layer) / steps, 1e3 * (whole - base) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu/mamba1_decode_layer.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    mamba1_block_decode.ENABLED = False
    timed_step_projected()
    rows = []
    load0 = os.getloadavg()
    for dname in args.dtypes.split(","):
        model = bm.make_ssm("mamba1").to(bm.DTYPES[dname])
        ids = torch.randint(0, bm.VOCAB, (1, bm.PROMPT))
        runs = {"kernel": [], "composed": []}
        for _ in range(args.rounds):
            for name, on in (("kernel", True), ("composed", False)):
                runs[name].append(round_ms(model, ids, args.steps, on))
        med = {k: {"layer_ms": statistics.median(r[0] for r in v), "step_ms": statistics.median(r[1] for r in v)}
               for k, v in runs.items()}
        rows.append({"dtype": dname, "median_thread_cpu_ms_per_token": med, "runs": runs})
        for k, v in med.items():
            print(f"mamba1 {dname} {k:8s} layers (conv..state step + out_proj) {v['layer_ms']:6.2f} ms, "
                  f"whole step {v['step_ms']:6.2f} ms per token (thread CPU)")
        print(f"  layer part composed / kernel {med['composed']['layer_ms'] / med['kernel']['layer_ms']:.2f}x, "
              f"step {med['composed']['step_ms'] / med['kernel']['step_ms']:.2f}x", flush=True)
    out = {"load_avg_start": load0, "load_avg_end": os.getloadavg(), "rounds": args.rounds, "steps": args.steps,
           "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"load avg {load0[:3]} -> {os.getloadavg()[:3]}; wrote {args.out}")


if __name__ == "__main__":
    main()
