"""Backward of ``ssd_chunk_scan`` composed of forward scans (the CUDA backward; rows with
optional seq_idx, not cu_seqlens).

With Δ the processed dt, a_t = exp(Δ_t A), H_t = a_t H_{t-1} + Δ_t x_t B_t^T and y_t = H_t C_t,
the adjoint state dH_t = a_{t+1} dH_{t+1} + dy_t C_t^T is the same recurrence run backwards in
time (decays shifted by one token, injection without the Δ factor). So, with ``scan`` the forward
kernel (``unit`` drops the Δ factor of the injection):
  ŷ, H_final       = scan(x, Δ; B, C)                       the recomputed forward
  o_t = dH_t B_t   = reversed scan(dy; C, B)                 dx = Δ o + D dy
  dH_t^T x_t       = reversed scan(C; dy, x)  per head        dB = Σ_heads Δ dH^T x
  H_t^T dy_t       = scan(B; x, dy)           per head        dC = Σ_heads H^T dy
The decays' gradient d(Δ_k A) is the sum over the pairs (source s < k <= target t) of
dy_t · (s's part of y_t); it is summed block by block (see _decay_grad) so that no long-range
sum of large opposite terms loses it, with one more reversed scan that resets at each block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssm.ops import _library
from ssm.ops.python import reference

_BLOCK = 256  # tokens per block of the decay gradient's local sums


def _flip(t):
    return None if t is None else t.flip(1)


def _per_head(t, H):
    # (B, L, G, N) -> (B, L, H, N): head h reads group h // (H / G) (a view when G == 1)
    b, L, G, N = t.shape
    return t.expand(b, L, H, N) if G == 1 else t.repeat_interleave(H // G, dim=2)


def _group_sum(t, G):
    # (B, L, H, N) float32 -> (B, L, G, N): the sum over each group's heads
    b, L, H, N = t.shape
    return t.view(b, L, G, H // G, N).sum(3)


def _runs(seq_idx, batch, L, device, block=False):
    """(B, L) int32 ids that change where seq_idx changes (and at each block start with ``block``)."""
    change = torch.zeros(batch, L, dtype=torch.bool, device=device)
    if block:
        change |= (torch.arange(L, device=device) % _BLOCK == 0)
    if seq_idx is not None:
        change[:, 1:] |= seq_idx[:, 1:] != seq_idx[:, :-1]
    return change.to(torch.int32).cumsum(1, dtype=torch.int32)


def _reversed_delta(delta, runs):
    """Δ for the reversed scans: token t decays by Δ_{t+1}, by nothing at a run's last token."""
    last = torch.ones_like(runs, dtype=torch.bool)
    last[:, :-1] = runs[:, 1:] != runs[:, :-1]
    shifted = torch.zeros_like(delta)
    shifted[:, :-1] = delta[:, 1:]
    return shifted.masked_fill(last[..., None], 0.0).flip(1)


def _blocks(t, nb):
    # (B, L, H) -> (B, nb, _BLOCK, H), zero padded
    b, L, H = t.shape
    return F.pad(t, (0, 0, 0, nb * _BLOCK - L)).view(b, nb, _BLOCK, H)


def _decay_grad(dy_y, x_dx, x_dx_block, z0):
    """d(Δ_k A) (B, L, H) from per-token dot products: dy_y = dy_t·ŷ_t, x_dx = x_s·dx̂_s, x_dx_block =
    x_s·dx̂_s with the adjoint reset at each block (pairs inside the block only), z0 = <init, dinit>.
    For k in block c: pairs inside c crossing k + pairs from before c to t >= k in c + pairs from
    s < k in c to after c + pairs from before c to after c (a short recurrence over blocks)."""
    b, L, H = dy_y.shape
    nb = -(-L // _BLOCK)
    yh, xa, xo = (_blocks(t, nb) for t in (dy_y, x_dx_block, x_dx - x_dx_block))
    suffix = lambda t: t.flip(2).cumsum(2).flip(2)
    inside = suffix(yh) - suffix(xa) + (xo.cumsum(2) - xo)
    leave, enter = xo.sum(2), yh.sum(2) - xa.sum(2)  # (B, nb, H): pairs leaving / entering block c
    crossing = z0[:, None] + torch.cumsum(leave - enter, 1) - (leave - enter)  # pairs over c's start
    dl = inside + (crossing - enter)[:, :, None]
    return dl.view(b, nb * _BLOCK, H)[:, :L]


def _gate_grads(y_hat, x, D, z, dy):
    """(dy seen by the scan, dz, dD) for y = (ŷ + D x) silu(z), all float32."""
    xf, dyf = x.float(), dy.float()
    y_pre = y_hat if D is None else y_hat + D * xf
    dz = None
    if z is not None:
        zf = z.float()
        sig = torch.sigmoid(zf)
        dz = dyf * y_pre * sig * (1 + zf * (1 - sig))
        dyf = dyf * zf * sig
    return dyf, dz, None if D is None else (dyf * xf).sum((0, 1))


def _delta_graph(dt, dt_bias, softplus, lo, hi):
    """Δ = clamp(softplus?(dt + dt_bias)) under autograd, with its leaves."""
    with _library._autograd_inside_op():
        dt_leaf = dt.detach().requires_grad_()
        bias_leaf = None if dt_bias is None else dt_bias.detach().requires_grad_()
        delta = reference._transform_dt(dt_leaf, bias_leaf, softplus).clamp(min=lo, max=hi)
    return delta, [t for t in (dt_leaf, bias_leaf) if t is not None]


def backward(scan, x, dt, A, B, C, D, z, dt_bias, init, seq_idx, dy, dfinal, softplus, lo, hi):
    """Gradients (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit) (None for absent inputs).
    ``scan(x, delta, A, B, C, init, seq_idx, unit, final)`` -> (y, final)."""
    batch, L, H, P = x.shape
    delta_graph, leaves = _delta_graph(dt, dt_bias, softplus, lo, hi)
    delta = delta_graph.detach()
    y_hat = scan(x, delta, A, B, C, init, seq_idx, False, False)[0].float()
    dyf, dz, dD = _gate_grads(y_hat, x, D, z, dy)
    dy_s = dyf.to(x.dtype)
    # adjoint scans in reversed time
    runs = _runs(seq_idx, batch, L, x.device)
    delta_r, seq_r = _reversed_delta(delta, runs), _flip(runs)
    o_r, dh_first = scan(_flip(dy_s), delta_r, A, _flip(C), _flip(B), dfinal, seq_r, True, init is not None)
    o = _flip(o_r).float()
    dfinal_t = None if dfinal is None else dfinal.transpose(-1, -2).contiguous()
    dbh = scan(_per_head(_flip(C), H), delta_r, A, _flip(dy_s), _flip(x), dfinal_t, seq_r, True, False)[0]
    dB = _group_sum(_flip(dbh).float() * delta[..., None], B.shape[2])
    init_t = None if init is None else init.transpose(-1, -2).contiguous()
    dC = _group_sum(scan(_per_head(B, H), delta, A, x, dy_s, init_t, seq_idx, False, False)[0].float(), C.shape[2])
    dinit = None if init is None else torch.exp(delta[:, 0] * A)[..., None, None] * dh_first
    # the decays, from local sums
    block_runs = _runs(seq_idx, batch, L, x.device, block=True)
    o_block = _flip(scan(_flip(dy_s), _reversed_delta(delta, block_runs), A, _flip(C), _flip(B), None,
                         _flip(block_runs), True, False)[0]).float()
    xf = x.float()
    z0 = torch.zeros(batch, H, device=x.device) if init is None else (init * dinit).sum((-1, -2))
    dl = _decay_grad((dyf * y_hat).sum(-1), (xf * o).sum(-1) * delta, (xf * o_block).sum(-1) * delta, z0)
    ddelta = A * dl + (xf * o).sum(-1)
    dA = (delta * dl).sum((0, 1))
    with _library._autograd_inside_op():
        dgrads = torch.autograd.grad(delta_graph, leaves, ddelta)
    dx = delta[..., None] * o if D is None else delta[..., None] * o + D * dyf
    return (dx.to(x.dtype), dgrads[0].to(dt.dtype), dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            dD, None if dz is None else dz.to(z.dtype), dgrads[1] if dt_bias is not None else None, dinit)
