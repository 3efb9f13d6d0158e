"""Tensor-parallel linear layers (``mamba_ssm.distributed.tensor_parallel``).

``ColumnParallelLinear`` holds this rank's rows of the weight (a slice of the output features);
``RowParallelLinear`` holds its columns (a slice of the input features) and sums the partial
outputs over the ranks. Both are ``nn.Linear`` subclasses, so their state_dict keys are
``weight`` / ``bias`` with the local shapes. With ``sequence_parallel`` the activations outside
the pair are split along their first dimension across the ranks: the column-parallel layer
all-gathers its input, the row-parallel one reduce-scatters its output.

Differs from mamba_ssm: every rank of a ``RowParallelLinear`` holds the (replicated) bias and
adds it once, after the reduction (mamba_ssm gives it to rank 0 only), so every rank has the
same state_dict keys."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssm.distributed.collectives import all_gather, all_reduce, copy_to_parallel_region, reduce_scatter

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "check_divisible", "column_linear", "row_linear"]


def check_divisible(process_group, **sizes: int) -> None:
    """ValueError naming process_group unless every size divides by the group's size (no collective)."""
    world = 1 if process_group is None else process_group.size()
    for name, size in sizes.items():
        if size % world:
            raise ValueError(f"process_group: {name} = {size} is not divisible by the world size {world}")


def _local_features(features: int, multiple_of: int, process_group, name: str) -> int:
    """This rank's share of ``features`` in whole multiples of ``multiple_of`` (lower ranks get the remainder)."""
    if features % multiple_of:
        raise ValueError(f"{name}: {features} is not a multiple of multiple_of = {multiple_of}")
    world, rank = process_group.size(), process_group.rank()
    div, mod = divmod(features // multiple_of, world)
    return (div + int(rank < mod)) * multiple_of


class ColumnParallelLinear(nn.Linear):
    """y_local = x @ W_local^T + b_local, W_local this rank's slice of the output features."""

    def __init__(self, in_features, out_features, process_group, bias=True, sequence_parallel=True,
                 multiple_of=1, device=None, dtype=None):
        local = _local_features(out_features, multiple_of, process_group, "out_features")
        super().__init__(in_features, local, bias=bias, device=device, dtype=dtype)
        self.process_group = process_group
        self.sequence_parallel = sequence_parallel

    def forward(self, x: Tensor) -> Tensor:
        """x (N, ..., in) split along N across ranks with sequence_parallel (else replicated) ->
        (world*N or N, ..., local out)."""
        if self.sequence_parallel:
            x = all_gather(x, self.process_group)
        else:
            x = copy_to_parallel_region(x, self.process_group)
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Linear):
    """y = sum over ranks of x_local @ W_local^T, + b; W_local this rank's slice of the input features."""

    def __init__(self, in_features, out_features, process_group, bias=True, sequence_parallel=True,
                 multiple_of=1, device=None, dtype=None):
        local = _local_features(in_features, multiple_of, process_group, "in_features")
        super().__init__(local, out_features, bias=bias, device=device, dtype=dtype)
        self.process_group = process_group
        self.sequence_parallel = sequence_parallel

    def forward(self, x: Tensor) -> Tensor:
        """x (N, ..., local in) -> (N/world with sequence_parallel, else N, ..., out)."""
        return self.reduce(F.linear(x, self.weight))

    def reduce(self, partial: Tensor) -> Tensor:
        """Sum this rank's partial product with the others' (reduce-scattered along the first
        dimension with sequence_parallel, else all-reduced), then add the bias."""
        if self.sequence_parallel:
            out = reduce_scatter(partial, self.process_group)
        else:
            out = all_reduce(partial, self.process_group)
        return out if self.bias is None else out + self.bias


def column_linear(in_features, out_features_local, process_group, sequence_parallel, **kwargs) -> nn.Linear:
    """nn.Linear on one process, else the ColumnParallelLinear whose local shard has ``out_features_local`` rows."""
    if process_group is None:
        return nn.Linear(in_features, out_features_local, **kwargs)
    return ColumnParallelLinear(in_features, out_features_local * process_group.size(), process_group,
                                sequence_parallel=sequence_parallel, **kwargs)


def row_linear(in_features_local, out_features, process_group, sequence_parallel, **kwargs) -> nn.Linear:
    """nn.Linear on one process, else the RowParallelLinear whose local shard has ``in_features_local`` columns."""
    if process_group is None:
        return nn.Linear(in_features_local, out_features, **kwargs)
    return RowParallelLinear(in_features_local * process_group.size(), out_features, process_group,
                             sequence_parallel=sequence_parallel, **kwargs)
