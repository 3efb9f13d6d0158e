"""Backward of ``ssd_chunk_scan`` composed of forward scans (the CUDA backward).

With Δ the processed dt, a_t = exp(Δ_t A), H_t = a_t H_{t-1} + Δ_t x_t B_t^T and y_t = H_t C_t,
the adjoint state dH_t = a_{t+1} dH_{t+1} + dy_t C_t^T is the same recurrence run backwards in
time (decays shifted by one token, injection without the Δ factor). So, with ``scan`` the forward
kernel (``unit`` drops the Δ factor of the injection):
  ŷ, H_final       = scan(x, Δ; B, C)                       the recomputed forward
  o_t = dH_t B_t   = reversed scan(dy; C, B)                 dx = Δ o + D dy
  dH_t^T x_t       = reversed scan(C; dy, x)  per head        dB = Σ_heads Δ dH^T x
  H_t^T dy_t       = scan(B; x, dy)           per head        dC = Σ_heads H^T dy
and the decays' gradient: with g_t = dy_t·ŷ_t - x_t·(Δ_t o_t) (+ <dfinal, H_final> where a state
leaves, - <init, dinit> where one enters), d(Δ_k A) = Σ_{t >= k} g_t.
"""
from __future__ import annotations

import torch

from ssm.ops import _library
from ssm.ops.python import reference


def _delta(dt, dt_bias, softplus, lo, hi):
    """Δ under autograd (so its gradient flows back to dt and dt_bias), float32."""
    return reference._transform_dt(dt, dt_bias, softplus).clamp(min=lo, max=hi)


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


def _last_of_segment(seq_idx, cu_seqlens, batch, L, device):
    """(B, L) bool: token t is the last of its sequence (or of the row)."""
    if cu_seqlens is not None:
        seg = torch.searchsorted(cu_seqlens, torch.arange(L, device=device, dtype=cu_seqlens.dtype), right=True)[None]
    elif seq_idx is not None:
        seg = seq_idx
    else:
        seg = torch.zeros(batch, L, dtype=torch.int32, device=device)
    last = torch.ones(batch, L, dtype=torch.bool, device=device)
    last[:, :-1] = seg[:, 1:] != seg[:, :-1]
    return last


def _reverse_cu(cu_seqlens, L):
    return None if cu_seqlens is None else (L - cu_seqlens.flip(0)).contiguous()


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


def _adjoint_entry(cu_seqlens, dfinal, dvarlen, device):
    """The adjoint each reversed sequence starts from, in forward sequence order (or None)."""
    if cu_seqlens is None:
        return dfinal
    if dfinal is None:
        return dvarlen
    nseq = cu_seqlens.shape[0] - 1
    s_last = torch.searchsorted(cu_seqlens, cu_seqlens[-1:] - 1, right=True) - 1
    onehot = (torch.arange(nseq, device=device) == s_last).float()[:, None, None, None]
    return onehot * dfinal if dvarlen is None else dvarlen + onehot * dfinal


def _reversed_delta(delta, seq_idx, cu_seqlens):
    """Δ for the reversed scans: token t decays by Δ_{t+1}, by nothing at a sequence's last token."""
    batch, L = delta.shape[:2]
    last = _last_of_segment(seq_idx, cu_seqlens, batch, L, delta.device)
    shifted = torch.zeros_like(delta)
    shifted[:, :-1] = delta[:, 1:]
    return shifted.masked_fill(last[..., None], 0.0).flip(1)


def _dinit(delta, A, cu_seqlens, dh_first):
    """d initial states = a_first · dH at the first token (each sequence's, with cu_seqlens)."""
    if cu_seqlens is None:
        return torch.exp(delta[:, 0] * A)[..., None, None] * dh_first
    starts = cu_seqlens[:-1].long()
    nonempty = cu_seqlens[1:].long() > starts
    a = torch.exp(delta[0, starts.clamp(max=delta.shape[1] - 1)] * A)
    return torch.where(nonempty[:, None], a, torch.ones_like(a))[..., None, None] * dh_first.flip(0)


def _decay_grad_terms(g, cu_seqlens, init, dinit, d_enter, h_final, h_varlen):
    """g (B, L, H) += <d state, state> where a state leaves, -= <init, dinit> where one enters."""
    L = g.shape[1]
    if cu_seqlens is None:
        if d_enter is not None:
            g[:, L - 1] += (d_enter * h_final).sum((-1, -2))
        return g
    starts, ends = cu_seqlens[:-1].long(), cu_seqlens[1:].long()
    nonempty = ends > starts
    pos = torch.arange(L, device=g.device)
    if d_enter is not None:
        last = ((pos[None] == (ends - 1)[:, None]) & nonempty[:, None]).to(g.dtype)
        g[0] += last.T @ (d_enter * h_varlen).sum((-1, -2))
    if init is not None:
        before = ((pos[None] == (starts - 1)[:, None]) & nonempty[:, None]).to(g.dtype)
        g[0] -= before.T @ (init * dinit).sum((-1, -2))
    return g


def backward(scan, x, dt, A, B, C, D, z, dt_bias, init, seq_idx, cu_seqlens, dy, dfinal, dvarlen,
             softplus, lo, hi):
    """Gradients (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit) (None for absent inputs).
    ``scan(x, delta, A, B, C, init, seq_idx, cu_seqlens, unit, final, varlen)`` -> (y, final, varlen)."""
    batch, L, H, P = x.shape
    G = B.shape[2]
    cu_mode = cu_seqlens is not None
    with _library._autograd_inside_op():
        dt_leaf = dt.detach().requires_grad_()
        bias_leaf = None if dt_bias is None else dt_bias.detach().requires_grad_()
        delta_graph = _delta(dt_leaf, bias_leaf, softplus, lo, hi)
    delta = delta_graph.detach()
    d_enter = _adjoint_entry(cu_seqlens, dfinal, dvarlen, x.device)
    y_hat, h_final, h_varlen = scan(x, delta, A, B, C, init, seq_idx, cu_seqlens, False,
                                    d_enter is not None and not cu_mode, cu_mode and d_enter is not None)
    y_hat = y_hat.float()
    dyf, dz, dD = _gate_grads(y_hat, x, D, z, dy)
    dy_s = dyf.to(x.dtype)
    # adjoint scans in reversed time
    delta_r, seq_r, cu_r = _reversed_delta(delta, seq_idx, cu_seqlens), _flip(seq_idx), _reverse_cu(cu_seqlens, L)
    init_r = None if d_enter is None else (d_enter.flip(0) if cu_mode else d_enter).contiguous()
    want_dinit = init is not None
    o_r, dh_final, dh_var = scan(_flip(dy_s), delta_r, A, _flip(C), _flip(B), init_r, seq_r, cu_r, True,
                                 want_dinit and not cu_mode, want_dinit and cu_mode)
    o = _flip(o_r).float()
    dx_hat = delta[..., None] * o
    init_rt = None if init_r is None else init_r.transpose(-1, -2).contiguous()
    dbh = scan(_per_head(_flip(C), H), delta_r, A, _flip(dy_s), _flip(x), init_rt, seq_r, cu_r, True, False, False)[0]
    dB = _group_sum(_flip(dbh).float() * delta[..., None], G)
    init_t = None if init is None else init.transpose(-1, -2).contiguous()
    dch = scan(_per_head(B, H), delta, A, x, dy_s, init_t, seq_idx, cu_seqlens, False, False, False)[0]
    dC = _group_sum(dch.float(), G)
    dinit = None if not want_dinit else _dinit(delta, A, cu_seqlens, dh_var if cu_mode else dh_final)
    # the decays: d(Δ_k A) = Σ_{t >= k} g_t
    xf = x.float()
    g = (dyf * y_hat).sum(-1) - (xf * dx_hat).sum(-1)
    g = _decay_grad_terms(g, cu_seqlens, init, dinit, d_enter, h_final, h_varlen)
    dl = g.flip(1).cumsum(1).flip(1)
    ddelta = A * dl + (xf * o).sum(-1)
    dA = (delta * dl).sum((0, 1))
    with _library._autograd_inside_op():
        wrt = [dt_leaf] + ([bias_leaf] if bias_leaf is not None else [])
        dgrads = torch.autograd.grad(delta_graph, wrt, ddelta)
    dx = dx_hat if D is None else dx_hat + D * dyf
    return (dx.to(x.dtype), dgrads[0].to(dt.dtype), dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            dD, None if dz is None else dz.to(z.dtype), dgrads[1] if bias_leaf is not None else None, dinit)
