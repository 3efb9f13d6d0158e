"""Which slice of each full tensor a tensor-parallel rank holds, and checkpoint load/save through it.

``shard_plan(model)`` maps every sharded state_dict key of a tensor-parallel model to a ``Split``:
the dimension and the rank's segment sizes along it (a fused projection is several segments, e.g.
Mamba-2's in_proj rows [z0, x0, z, x, B, C, dt]; the rank holds its 1/world of each). Keys absent
from the plan are replicated. The one plan serves both directions: ``shard_state_dict`` slices a
full checkpoint for one rank, ``gather_state_dict`` puts the ranks' shards back together."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ssm.utils import weights
from ssm.utils.checkpoint_files import CheckpointError

__all__ = ["Split", "shard_plan", "shard_tensor", "shard_state_dict", "gather_state_dict", "load_pretrained",
           "save_pretrained", "sync_replicated"]


@dataclass(frozen=True)
class Split:
    """Along ``dim``, the full tensor is segments of world*s rows for s in ``sizes``; a rank holds
    its s rows of each, in order."""
    dim: int
    sizes: tuple


def _mamba2_rules(m) -> dict:
    gn, d_mlp = m.ngroups * m.d_state, m.d_inner - m.d_ssm
    in_proj = Split(0, (d_mlp, d_mlp, m.d_ssm, m.d_ssm, gn, gn, m.nheads))
    conv = Split(0, (m.d_ssm, gn, gn))
    heads = Split(0, (m.nheads,))
    return {"in_proj.weight": in_proj, "in_proj.bias": in_proj, "conv1d.weight": conv, "conv1d.bias": conv,
            "dt_bias": heads, "A_log": heads, "D": Split(0, (m.D.shape[0],)), "norm.weight": Split(0, (m.d_ssm,)),
            "out_proj.weight": Split(1, (d_mlp, m.d_ssm))}


def _mha_rules(m) -> dict:
    q, kv, half = m.num_heads * m.head_dim, m.num_heads_kv * m.head_dim, m.mlp_dim // 2
    in_proj, conv = Split(0, (q, kv, kv, half, half)), Split(0, (q, kv, kv))
    return {"in_proj.weight": in_proj, "in_proj.bias": in_proj, "conv1d.weight": conv, "conv1d.bias": conv,
            "out_proj.weight": Split(1, (q, half))}


def _mlp_rules(m) -> dict:
    fc1 = Split(0, (m.hidden_features, m.hidden_features))
    return {"fc1.weight": fc1, "fc1.bias": fc1, "fc2.weight": Split(1, (m.hidden_features,))}


def shard_plan(model: torch.nn.Module) -> dict:
    """{state_dict key: Split} for the tensor-parallel layers (those with a process_group) of model."""
    from ssm.modules.attention import MHA
    from ssm.modules.mamba2 import Mamba2
    from ssm.modules.mlp import GatedMLP
    rules = {Mamba2: _mamba2_rules, MHA: _mha_rules, GatedMLP: _mlp_rules}
    keys = set(model.state_dict())
    plan = {}
    for prefix, module in model.named_modules():
        rule = rules.get(type(module))
        if rule is None or module.process_group is None:
            continue
        for name, split in rule(module).items():
            key = f"{prefix}.{name}" if prefix else name
            if key in keys:
                plan[key] = split
    return plan


def shard_tensor(full: Tensor, split: Split, rank: int, world: int, key: str = "tensor") -> Tensor:
    """This rank's shard of the full tensor."""
    expected = world * sum(split.sizes)
    if full.dim() <= split.dim or full.shape[split.dim] != expected:
        raise CheckpointError(f"{key}: expected {expected} entries along dim {split.dim} (shape "
                              f"{tuple(full.shape)}) to split over {world} ranks")
    segments = full.split([world * s for s in split.sizes], dim=split.dim)
    return torch.cat([seg.narrow(split.dim, rank * s, s) for seg, s in zip(segments, split.sizes)], dim=split.dim)


def _unshard(shards: list, split: Split) -> Tensor:
    """The full tensor from every rank's shard (rank order)."""
    per_rank = [shard.split(list(split.sizes), dim=split.dim) for shard in shards]
    return torch.cat([parts[i] for i in range(len(split.sizes)) for parts in per_rank], dim=split.dim)


def shard_state_dict(state: dict, plan: dict, rank: int, world: int) -> dict:
    """A full state dict -> this rank's (sharded keys sliced, the rest as they are)."""
    return {k: shard_tensor(v, plan[k], rank, world, k) if k in plan else v for k, v in state.items()}


def gather_state_dict(model: torch.nn.Module, process_group) -> dict | None:
    """The full (single-process) state dict of a tensor-parallel model, on CPU, on the group's
    rank 0 (None elsewhere). Every rank must call it."""
    plan = shard_plan(model)
    rank, world = process_group.rank(), process_group.size()
    dst = dist.get_global_rank(process_group, 0)
    full = {}
    for key, value in model.state_dict().items():
        if key not in plan:
            full[key] = value.detach().cpu()
            continue
        shards = [torch.empty_like(value) for _ in range(world)] if rank == 0 else None
        dist.gather(value.detach().contiguous(), shards, dst=dst, group=process_group)
        if rank == 0:
            full[key] = _unshard(shards, plan[key]).cpu()
    return full if rank == 0 else None


def load_pretrained(cls, name_or_path, process_group, device=None, dtype=None, revision=None, **kwargs):
    """cls(config, process_group=process_group, ...) holding this rank's shard of a full checkpoint."""
    config_dict, state = weights.read_checkpoint(name_or_path, revision)
    model = cls(weights.config_from_dict(config_dict), device=device, dtype=dtype, process_group=process_group,
                **kwargs)
    state = shard_state_dict(state, shard_plan(model), process_group.rank(), process_group.size())
    weights.load_checkpoint_into(model, state, source=str(name_or_path))
    return model


def save_pretrained(model, save_directory, process_group, **kwargs) -> None:
    """Gather the shards and write an ordinary full checkpoint from the group's rank 0 (the other
    ranks write nothing); returns once it is written, on every rank."""
    full = gather_state_dict(model, process_group)
    if full is not None:
        single = type(model)(model.config, device="meta")
        single.load_state_dict(full, assign=True)
        single.tie_weights()
        weights.save_pretrained(single, save_directory, **kwargs)
    dist.barrier(group=process_group)


def sync_replicated(model: torch.nn.Module, process_group) -> None:
    """Broadcast the replicated parameters and buffers (those not in the shard plan) from the
    group's rank 0, so that every rank holds the same values."""
    plan = shard_plan(model)
    src = dist.get_global_rank(process_group, 0)
    with torch.no_grad():
        for key, tensor in model.state_dict(keep_vars=True).items():
            if key not in plan:
                dist.broadcast(tensor.data, src=src, group=process_group)
