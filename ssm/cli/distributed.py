"""``ssm train`` under ``torchrun --nproc-per-node N``: the process group from the environment
(gloo on CPU, nccl on CUDA), the model wrapped in DDP (default) or FSDP2 (``--fsdp``: fully_shard
per block, then the root), full state dicts for the single checkpoint rank 0 writes."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    fsdp: bool = False

    @property
    def distributed(self) -> bool:
        return self.world > 1 or dist.is_initialized()

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Started by torchrun (or another launcher that sets WORLD_SIZE)?"""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def setup(device: torch.device, fsdp: bool) -> tuple[Context, torch.device]:
    """Join the process group torchrun describes; each rank takes GPU LOCAL_RANK when on CUDA."""
    if not launched():
        return Context(fsdp=fsdp), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), fsdp), device


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ctx: Context, device: torch.device) -> torch.nn.Module:
    """DDP, or fully_shard on every block then the root (--fsdp); the model itself on one process."""
    if ctx.fsdp:
        from torch.distributed.fsdp import fully_shard
        for block in model.backbone.layers:
            fully_shard(block)
        return fully_shard(model)
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The MambaLMHeadModel inside a DDP wrapper (FSDP2 shards the model in place)."""
    return getattr(model, "module", model)


def local_rows(batch: torch.Tensor, ctx: Context) -> torch.Tensor:
    """This rank's rows of a global batch (every rank samples the same global batch)."""
    return batch.chunk(ctx.world, dim=0)[ctx.rank] if ctx.world > 1 else batch


def mean(value: float, ctx: Context, device: torch.device) -> float:
    """The mean over ranks of a per-rank number (the loss of its rows)."""
    if ctx.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / ctx.world


def save_model(model: torch.nn.Module, out, ctx: Context) -> None:
    """save_pretrained of the full model, written by rank 0 (with FSDP2 every rank takes part
    in gathering the full state dict)."""
    if not ctx.fsdp:
        if ctx.main:
            unwrap(model).save_pretrained(out)
        return
    full = get_model_state_dict(model, options=_FULL)
    if ctx.main:
        from ssm.models.lm import MambaLMHeadModel
        copy = MambaLMHeadModel(model.config, device="meta")
        copy.load_state_dict(full, assign=True)
        copy.tie_weights()
        copy.save_pretrained(out)


def optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The full optimizer state keyed by parameter names (the same under DDP, FSDP2 or none)."""
    return get_optimizer_state_dict(model, opt, options=_FULL)


def load_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a full optimizer state (keyed by names, or by index as checkpoints written before)."""
    if all(isinstance(k, int) for k in state["state"]) and state["state"]:
        opt.load_state_dict(state)
        return
    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))
