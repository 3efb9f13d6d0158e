"""Collectives with autograd over a ``torch.distributed`` process group (``mamba_ssm``'s
``distributed_utils``): the forward communicates, the backward does the adjoint communication.

- ``all_gather``: concatenate every rank's tensor along ``dim``; backward reduce-scatters.
- ``reduce_scatter``: sum over ranks, keep this rank's slice along ``dim``; backward all-gathers.
- ``all_reduce``: sum over ranks; backward passes the gradient through (the consumers of the sum
  are replicated, each rank holds the whole gradient).
- ``copy_to_parallel_region``: identity; backward all-reduces (the input of a column-parallel
  layer, whose ranks each see part of its gradient).

Work on every backend torch.distributed has (gloo on CPU, NCCL on GPUs)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather", "reduce_scatter", "all_reduce", "copy_to_parallel_region",
           "all_gather_raw", "reduce_scatter_raw", "all_reduce_raw"]


def all_gather_raw(x: Tensor, process_group, dim: int = 0) -> Tensor:
    """Every rank's x concatenated along dim, in rank order (no autograd)."""
    world = dist.get_world_size(process_group)
    if world == 1:
        return x
    parts = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=process_group)
    return torch.cat(parts, dim=dim)


def reduce_scatter_raw(x: Tensor, process_group, dim: int = 0) -> Tensor:
    """This rank's 1/world slice along dim of the sum of every rank's x (no autograd)."""
    world = dist.get_world_size(process_group)
    if x.shape[dim] % world:
        raise ValueError(f"input: size {x.shape[dim]} along dim {dim} is not divisible by the world size {world}")
    if world == 1:
        return x
    parts = [p.contiguous() for p in x.chunk(world, dim=dim)]
    out = torch.empty_like(parts[0])
    dist.reduce_scatter(out, parts, group=process_group)
    return out


def all_reduce_raw(x: Tensor, process_group) -> Tensor:
    """Sum of every rank's x, in a new tensor (no autograd)."""
    out = x.contiguous().clone()
    if dist.get_world_size(process_group) > 1:
        dist.all_reduce(out, group=process_group)
    return out


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, process_group, dim):
        ctx.process_group, ctx.dim = process_group, dim
        return all_gather_raw(x, process_group, dim)

    @staticmethod
    def backward(ctx, grad):
        return reduce_scatter_raw(grad, ctx.process_group, ctx.dim), None, None


class _ReduceScatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, process_group, dim):
        ctx.process_group, ctx.dim = process_group, dim
        return reduce_scatter_raw(x, process_group, dim)

    @staticmethod
    def backward(ctx, grad):
        return all_gather_raw(grad, ctx.process_group, ctx.dim), None, None


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, process_group):
        return all_reduce_raw(x, process_group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _CopyToParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, process_group):
        ctx.process_group = process_group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_raw(grad, ctx.process_group), None


def all_gather(input_: Tensor, process_group, dim: int = 0) -> Tensor:
    """(..., n, ...) on each rank -> (..., world*n, ...): the ranks' tensors along ``dim``, in rank order."""
    return _AllGather.apply(input_, process_group, dim)


def reduce_scatter(input_: Tensor, process_group, dim: int = 0) -> Tensor:
    """(..., world*n, ...) on each rank -> (..., n, ...): this rank's slice of the sum over ranks."""
    return _ReduceScatter.apply(input_, process_group, dim)


def all_reduce(input_: Tensor, process_group) -> Tensor:
    """The sum of the ranks' tensors (same shape); the gradient passes through unchanged."""
    return _AllReduce.apply(input_, process_group)


def copy_to_parallel_region(input_: Tensor, process_group) -> Tensor:
    """input_ unchanged; its gradient is summed over the ranks."""
    return _CopyToParallelRegion.apply(input_, process_group)
