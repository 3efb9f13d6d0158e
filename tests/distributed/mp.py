"""Multi-process test harness: run a function on ``world`` processes joined in one
torch.distributed group (gloo on CPU; nccl with one GPU per rank) and collect what each returns."""
from __future__ import annotations

import os
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT_S = 300


def backends(world: int):
    """pytest params: gloo always; nccl (cuda-marked) when there are ``world`` GPUs."""
    nccl_ok = torch.cuda.device_count() >= world
    return [pytest.param("gloo", id="gloo"),
            pytest.param("nccl", id="nccl", marks=[pytest.mark.cuda,
                         pytest.mark.skipif(not nccl_ok, reason=f"needs {world} GPUs")])]


def device_for(backend: str, rank: int) -> torch.device:
    return torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")


def _worker(rank, world, backend, tmp, fn, args):
    torch.set_num_threads(1)  # ranks share the machine's cores
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        out = fn(rank, world, backend, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save(out, f"{tmp}/result{rank}.pt")


def run_workers(fn, world: int, *args, backend: str = "gloo"):
    """Run ``fn(rank, world, backend, *args)`` on every rank (``fn`` must be a module-level
    function); return the list of results, rank by rank. Raises if any rank fails or hangs."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.start_processes(_worker, args=(world, backend, tmp, fn, args), nprocs=world,
                                 join=False, start_method="spawn")
        deadline = time.monotonic() + TIMEOUT_S
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.terminate()
                raise TimeoutError(f"{fn.__name__}: ranks still running after {TIMEOUT_S} s")
        return [torch.load(os.path.join(tmp, f"result{r}.pt"), weights_only=False) for r in range(world)]
