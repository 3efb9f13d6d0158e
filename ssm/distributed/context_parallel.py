"""Context parallelism: one long sequence split along L across the ranks of a process group.

Each rank runs its slice (B, L/W, ...) through the whole model; the states cross rank boundaries:
the last d_conv-1 conv inputs of a slice start the next slice's conv, the final SSM state of a slice
is the next slice's initial state, and attention gathers the keys/values of all slices (a query at
global position p sees keys 0..p). Gradients flow back the same way. Pass the context to the model:
``model(local_ids, context_parallel=ContextParallel(group))``; then :func:`reduce_gradients`.

Two schedules for the SSM state (docs/distributed_training.md has the measurement):
``"sequential"`` receives the state from the previous rank, scans once, sends the final state on
(layer by layer, so the ranks form a pipeline); ``"combine"`` scans the slice from a zero state,
all-gathers (final state, decay) of every slice in one collective, composes the true initial state
(h_r = decay_{r-1} * h_{r-1} + final_{r-1}) and scans again from it.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor

SCHEDULES = ("sequential", "combine")


# ---- differentiable communication --------------------------------------------------------------

def _exchange(sends, recvs, group):
    """Post point-to-point sends [(tensor, rank)] and receives [(buffer, rank)], wait for all."""
    ops = [dist.P2POp(dist.isend, t.contiguous(), dist.get_global_rank(group, r), group) for t, r in sends]
    ops += [dist.P2POp(dist.irecv, b, dist.get_global_rank(group, r), group) for b, r in recvs]
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()


class _ShiftRight(torch.autograd.Function):
    """Each rank sends ``t`` to the next rank and returns what the previous rank sent (zeros on
    rank 0); backward sends the gradient back to the previous rank."""

    @staticmethod
    def forward(ctx, t, group):
        ctx.group = group
        rank, world = group.rank(), group.size()
        out = torch.zeros(t.shape, dtype=t.dtype, device=t.device)
        _exchange([(t, rank + 1)] if rank + 1 < world else [], [(out, rank - 1)] if rank > 0 else [], group)
        return out

    @staticmethod
    def backward(ctx, grad):
        rank, world = ctx.group.rank(), ctx.group.size()
        grad = grad.contiguous()
        dt = torch.zeros(grad.shape, dtype=grad.dtype, device=grad.device)
        _exchange([(grad, rank - 1)] if rank > 0 else [], [(dt, rank + 1)] if rank + 1 < world else [], ctx.group)
        return dt, None


class _RecvPrev(torch.autograd.Function):
    """The previous rank's final state (rank > 0); backward sends its gradient back there.
    ``anchor`` (the slice's scan input) only ties this node into the graph, so that its backward
    runs whenever the scan's does."""

    @staticmethod
    def forward(ctx, anchor, shape, dtype, group):
        ctx.group = group
        state = torch.empty(shape, dtype=dtype, device=anchor.device)
        _exchange([], [(state, group.rank() - 1)], group)
        return state

    @staticmethod
    def backward(ctx, grad):
        _exchange([(grad, ctx.group.rank() - 1)], [], ctx.group)
        return None, None, None, None


class _SendNext(torch.autograd.Function):
    """Returns y; sends ``final`` to the next rank, whose gradient comes back in backward."""

    @staticmethod
    def forward(ctx, y, final, group):
        ctx.group, ctx.like = group, (final.shape, final.dtype)
        if group.rank() + 1 < group.size():
            _exchange([(final.detach(), group.rank() + 1)], [], group)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad_y):
        group = ctx.group
        if group.rank() + 1 == group.size():
            return grad_y, None, None
        dfinal = torch.empty(ctx.like[0], dtype=ctx.like[1], device=grad_y.device)
        _exchange([], [(dfinal, group.rank() + 1)], group)
        return grad_y, dfinal, None


class _AllGather(torch.autograd.Function):
    """(W, *t.shape): every rank's ``t``; backward sums the gradients of all ranks and keeps this
    rank's row (every rank must run the backward: see _tie)."""

    @staticmethod
    def forward(ctx, t, group):
        ctx.group = group
        parts = [torch.empty_like(t, memory_format=torch.contiguous_format) for _ in range(group.size())]
        dist.all_gather(parts, t.contiguous(), group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.group.rank()], None


class _Tie(torch.autograd.Function):
    """Returns y; makes ``t`` part of the graph (zero gradient) so that a collective in t's
    backward runs on this rank too."""

    @staticmethod
    def forward(ctx, y, t):
        ctx.like = (t.shape, t.dtype, t.device)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):
        shape, dtype, device = ctx.like
        return grad, torch.zeros(shape, dtype=dtype, device=device)


# ---- the context -------------------------------------------------------------------------------

class ContextParallel:
    """The state passing of one forward over a sequence split across ``group`` (default: WORLD),
    rank r holding tokens [r*Ls, (r+1)*Ls) (equal slices). Passed to the mixers as the keyword
    argument ``context_parallel``; not with an inference cache or packed (seq_idx) batches."""

    def __init__(self, group: Optional[dist.ProcessGroup] = None, schedule: str = "sequential"):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
        self.group = group if group is not None else dist.group.WORLD
        self.schedule = schedule
        self.rank, self.world = self.group.rank(), self.group.size()

    def split(self, t: Tensor, dim: int = 1) -> Tensor:
        """This rank's slice of the full-length t along ``dim`` (the length must divide evenly)."""
        if t.shape[dim] % self.world:
            raise ValueError(f"t: length {t.shape[dim]} along dim {dim} is not divisible by the "
                             f"{self.world} ranks of the context-parallel group")
        return t.chunk(self.world, dim=dim)[self.rank]

    def gather(self, t: Tensor, dim: int = 1) -> Tensor:
        """The full-length tensor from every rank's slice t (differentiable)."""
        full = _AllGather.apply(t, self.group)
        return torch.cat(full.unbind(0), dim=dim)

    def offset(self, length: int) -> int:
        """Global position of this slice's first token, for slices of ``length`` tokens."""
        return self.rank * length

    def check(self, inference_params=None, seq_idx=None, cu_seqlens=None) -> None:
        if inference_params is not None or seq_idx is not None or cu_seqlens is not None:
            raise ValueError("context_parallel: not supported with inference_params, seq_idx or cu_seqlens")

    def conv_states(self, x: Tensor, width: int) -> Optional[Tensor]:
        """Initial conv states (B, D, width) of this slice: the last ``width`` inputs of the previous
        slice's x (B, D, Ls) (zeros on rank 0). Needs Ls >= width."""
        if width == 0:
            return None
        if x.shape[-1] < width:
            raise ValueError(f"x: a context-parallel slice of {x.shape[-1]} tokens is shorter than the "
                             f"conv state ({width} tokens)")
        return _ShiftRight.apply(x[..., -width:], self.group)

    def scan(self, run: Callable, decay: Callable, shape, u: Tensor) -> Tensor:
        """The output of this slice's scan, started from the state the previous slices leave.

        run(initial_state or None) -> (y, final_state of ``shape``, float32, float64 when the scan
        input ``u`` is); decay() -> the factor (broadcastable to ``shape``) by which the slice
        multiplies its initial state."""
        if self.world == 1:
            return run(None)[0]
        if self.schedule == "sequential":
            return self._scan_sequential(run, tuple(shape), u)
        return self._scan_combine(run, decay, tuple(shape))

    def _scan_sequential(self, run, shape, u):
        init = None
        if self.rank > 0:
            dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
            init = _RecvPrev.apply(u, shape, dtype, self.group)
        y, final = run(init)
        return _SendNext.apply(y, final, self.group)

    def _scan_combine(self, run, decay, shape):
        y0, local = run(None)
        # one collective: (W, 2, *shape) local final states and decays of every slice
        packed = torch.stack([local, decay().expand(shape).to(local.dtype)])
        every = _AllGather.apply(packed, self.group)
        if self.rank == 0:
            return _Tie.apply(y0, every)
        init = every[0, 0]
        for j in range(1, self.rank):
            init = every[j, 1] * init + every[j, 0]
        return run(init)[0]

    def attention_kv(self, k: Tensor, v: Tensor, causal: bool):
        """Keys and values (B, W*Ls, Hkv, hd) of the whole sequence from this slice's k, v
        (B, Ls, Hkv, hd), and the (1, 1, Ls, W*Ls) mask when causal (query at global position p
        sees keys 0..p; None otherwise: every key)."""
        kv = self.gather(torch.stack([k, v], dim=2), dim=1)
        Ls = k.shape[1]
        q_pos = self.offset(Ls) + torch.arange(Ls, device=k.device)
        k_pos = torch.arange(kv.shape[1], device=k.device)
        mask = (k_pos[None] <= q_pos[:, None])[None, None] if causal else None
        return kv[:, :, 0], kv[:, :, 1], mask


def reduce_gradients(model: torch.nn.Module, group: Optional[dist.ProcessGroup] = None) -> None:
    """Sum every parameter's gradient over the context-parallel group (each rank only saw its slice)."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, group=group)
