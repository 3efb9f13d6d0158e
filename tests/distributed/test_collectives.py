"""Collectives with autograd and the column/row-parallel linear pair, on ``world`` processes,
against the same computation done whole in each process (float64, same seed on every rank)."""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ssm.distributed import (ColumnParallelLinear, RowParallelLinear, all_gather, all_reduce,
                             copy_to_parallel_region, reduce_scatter)
from tests.distributed import mp

F64 = torch.float64


def cases(worlds):
    """(world, backend) params: gloo for every world, nccl where there are enough GPUs."""
    return [pytest.param(w, p.values[0], id=f"{p.id}-{w}", marks=p.marks) for w in worlds for p in mp.backends(w)]


def close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def _check_collectives(rank, world, dev):
    """Each rank r feeds xs[r] and back-propagates ws[r]; grads are the adjoint collective's."""
    group = dist.group.WORLD
    xs = torch.randn(world, 2, 3 * world, 5, dtype=F64, device=dev)
    shapes = {"gather": (2, 3 * world * world, 5), "scatter": (2, 3, 5), "reduce": (2, 3 * world, 5)}
    ws = {k: torch.randn(world, *s, dtype=F64, device=dev) for k, s in shapes.items()}
    sl = slice(3 * rank, 3 * rank + 3)
    runs = {
        "gather": (lambda x: all_gather(x, group, dim=1), torch.cat(list(xs), dim=1),
                   lambda w: w.sum(0)[:, 3 * world * rank:3 * world * (rank + 1)]),
        "scatter": (lambda x: reduce_scatter(x, group, dim=1), xs.sum(0)[:, sl], lambda w: torch.cat(list(w), 1)),
        "reduce": (lambda x: all_reduce(x, group), xs.sum(0), lambda w: w[rank]),
        "copy": (lambda x: copy_to_parallel_region(x, group), xs[rank], lambda w: w.sum(0)),
    }
    for name, (fn, expected, expected_grad) in runs.items():
        w = ws.get(name, ws["reduce"])
        x = xs[rank].clone().requires_grad_()
        y = fn(x)
        close(y, expected)
        y.backward(w[rank])
        close(x.grad, expected_grad(w))


def _check_parallel_linear(rank, world, dev, sequence_parallel):
    """ColumnParallelLinear -> gelu -> RowParallelLinear equals the whole pair; with sequence
    parallelism the tokens (first dimension) are split over the ranks outside the pair."""
    group = dist.group.WORLD
    n, d_in, d_hid, d_out = 2 * world, 5, 3 * world, 4
    w1, b1 = torch.randn(d_hid, d_in, dtype=F64, device=dev), torch.randn(d_hid, dtype=F64, device=dev)
    w2, b2 = torch.randn(d_out, d_hid, dtype=F64, device=dev), torch.randn(d_out, dtype=F64, device=dev)
    x, g = torch.randn(n, 3, d_in, dtype=F64, device=dev), torch.randn(n, 3, d_out, dtype=F64, device=dev)
    for p in (w1, b1, w2, b2):
        p.requires_grad_()
    xf = x.clone().requires_grad_()
    (F.linear(F.gelu(F.linear(xf, w1, b1)), w2, b2) * g).sum().backward()

    col = ColumnParallelLinear(d_in, d_hid, group, sequence_parallel=sequence_parallel, device=dev, dtype=F64)
    row = RowParallelLinear(d_hid, d_out, group, sequence_parallel=sequence_parallel, device=dev, dtype=F64)
    h = slice(3 * rank, 3 * rank + 3)
    with torch.no_grad():
        col.weight.copy_(w1[h]), col.bias.copy_(b1[h]), row.weight.copy_(w2[:, h]), row.bias.copy_(b2)
    t = slice(2 * rank, 2 * rank + 2) if sequence_parallel else slice(None)
    xl = x[t].clone().requires_grad_()
    y = row(F.gelu(col(xl)))
    close(y, F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)[t])
    (y * g[t]).sum().backward()
    close(xl.grad, xf.grad[t])
    close(col.weight.grad, w1.grad[h]), close(col.bias.grad, b1.grad[h]), close(row.weight.grad, w2.grad[:, h])
    # a replicated parameter after a sequence-parallel layer sees only this rank's tokens
    bias_grad = all_reduce(row.bias.grad, group) if sequence_parallel else row.bias.grad
    close(bias_grad, b2.grad)


def _worker(rank, world, backend, seed):
    dev = mp.device_for(backend, rank)
    torch.manual_seed(seed)  # the same "whole" tensors on every rank
    _check_collectives(rank, world, dev)
    _check_parallel_linear(rank, world, dev, sequence_parallel=False)
    _check_parallel_linear(rank, world, dev, sequence_parallel=True)
    # uneven output split in whole multiples: lower ranks take the remainder
    split = ColumnParallelLinear(5, 4 * (world + 1), dist.group.WORLD, multiple_of=4, device=dev)
    return split.weight.shape[0]


@pytest.mark.parametrize("world, backend", cases([2, 3]))
def test_collectives_and_parallel_linear(world, backend, fresh_seed):
    rows = mp.run_workers(_worker, world, fresh_seed, backend=backend)
    assert rows == [8] + [4] * (world - 1)


class _Group:
    """A process group's size and rank, without any communication."""

    def __init__(self, size, rank=0):
        self._size, self._rank = size, rank

    def size(self):
        return self._size

    def rank(self):
        return self._rank


def test_parallel_linear_local_shapes_and_bad_sizes():
    assert ColumnParallelLinear(6, 10, _Group(3, 2)).weight.shape == (3, 6)
    assert RowParallelLinear(10, 6, _Group(3, 0), bias=True).weight.shape == (6, 4)
    with pytest.raises(ValueError, match="out_features"):
        ColumnParallelLinear(6, 10, _Group(2), multiple_of=4)
    with pytest.raises(ValueError, match="in_features"):
        RowParallelLinear(10, 6, _Group(2), multiple_of=4)
