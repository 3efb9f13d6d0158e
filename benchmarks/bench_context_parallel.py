"""Benchmark of the two context-parallel schedules (ssm.distributed.context_parallel) on the CPU
with gloo: forward + backward of a MambaLMHeadModel over one sequence split across W ranks (one
thread each; the variants take turns in every repetition), "sequential" (states passed rank to rank, layer by layer: a pipeline) against
"combine" (zero-state scan, one all-gather of (final state, decay), second scan), beside the
bound "independent" (each rank its slice with no state passing at all: no communication, wrong
result) and one process running the whole sequence on one thread. Writes JSON (machine,
versions, shapes, medians) to benchmarks/results/cpu/context_parallel.json.

Usage: python benchmarks/bench_context_parallel.py [--reps N] [--worlds 2 3] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ssm.distributed import context_parallel as cpm  # noqa: E402
from ssm.models.config import MambaConfig  # noqa: E402
from ssm.models.lm import MambaLMHeadModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "mamba1": dict(d_model=256, n_layer=4, ssm_cfg={"layer": "Mamba1", "d_state": 16}),
    "mamba2": dict(d_model=256, n_layer=4, ssm_cfg={"layer": "Mamba2", "d_state": 64, "headdim": 64,
                                                      "chunk_size": 64}),
}
VOCAB = 256


def _model(name):
    torch.manual_seed(0)
    return MambaLMHeadModel(MambaConfig(vocab_size=VOCAB, **MODELS[name]))


def _step(model, ids, cp):
    logits = model(ids, context_parallel=cp).logits if cp is not None else model(ids).logits
    logits.float().square().mean().backward()


def _time_round_robin(fns: dict, reps: int, barrier) -> dict:
    """Median ms of each fn, the fns taking turns (so that a change of machine load hits all)."""
    times = {name: [] for name in fns}
    for rep in range(reps + 1):
        for name, fn in fns.items():
            barrier()
            t0 = time.perf_counter()
            fn()
            barrier()
            if rep:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def _rank_main(rank, world, tmp, name, length, reps):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rdv", rank=rank, world_size=world)
    model = _model(name)
    ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(1))
    local = ids.chunk(world, dim=1)[rank]
    contexts = {"independent": None, **{s: cpm.ContextParallel(schedule=s) for s in cpm.SCHEDULES}}
    fns = {name: (lambda cp=cp: _step(model, local, cp)) for name, cp in contexts.items()}
    out = _time_round_robin(fns, reps, dist.barrier)
    if rank == 0:
        torch.save(out, f"{tmp}/out.pt")
    dist.destroy_process_group()


def run_world(name, length, world, reps):
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank_main, args=(world, tmp, name, length, reps), nprocs=world)
        return torch.load(f"{tmp}/out.pt")


def one_process(name, length, reps):
    torch.set_num_threads(1)
    model = _model(name)
    ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(1))
    return _time_round_robin({"one": lambda: _step(model, ids, None)}, reps, lambda: None)["one"]


def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "load_avg": os.getloadavg()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--length", type=int, default=3072, help="tokens of the whole sequence (batch 1)")
    p.add_argument("--worlds", type=int, nargs="+", default=[2, 3])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu/context_parallel.json"))
    args = p.parse_args()
    rows = []
    print(f"{'model':8} {'W':>2} {'one proc':>9} {'independent':>12} {'sequential':>11} {'combine':>9}  (ms, fwd+bwd)")
    for name in MODELS:
        base = one_process(name, args.length, args.reps)
        for world in args.worlds:
            r = run_world(name, args.length, world, args.reps)
            rows.append({"model": name, "config": MODELS[name], "length": args.length, "world": world,
                         "one_process_ms": base, **{f"{k}_ms": v for k, v in r.items()}})
            print(f"{name:8} {world:2d} {base:9.0f} {r['independent']:12.0f} {r['sequential']:11.0f} "
                  f"{r['combine']:9.0f}", flush=True)
    result = {"machine": machine_info(), "reps": args.reps, "threads_per_rank": 1, "backend": "gloo",
              "pass": "forward+backward", "results": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
