"""Backward of ``ssd_chunk_scan`` composed of forward scans (the CUDA fallback with
SSM_SSD_BWD_KERNEL=0; the default is ssm/ops/cuda/ssd_chunk_scan_bwd.cu; rows with optional
seq_idx, not cu_seqlens).

With Δ the processed dt, a_t = exp(Δ_t A), H_t = a_t H_{t-1} + Δ_t x_t B_t^T and y_t = H_t C_t,
the adjoint state dH_t = a_{t+1} dH_{t+1} + dy_t C_t^T is the same recurrence run backwards in
time (decays shifted by one token, injection without the Δ factor). So, with ``scan`` the forward
kernel (``unit`` drops the Δ factor of the injection):
  ŷ, H_final       = scan(x, Δ; B, C)                       the recomputed forward
  o_t = dH_t B_t   = reversed scan(dy; C, B)                 dx = Δ o + D dy
  dH_t^T x_t       = reversed scan(C; dy, x)  per head        dB = Σ_heads Δ dH^T x
  H_t^T dy_t       = scan(B; x, dy)           per head        dC = Σ_heads H^T dy
The decays' gradient d(Δ_k A) is the sum over the pairs (source s < k <= target t) of
dy_t · (s's part of y_t). Summed as a difference of whole-row sums it would cancel to the pairs
crossing k and lose them to rounding, so it is summed chunk by chunk from genuine pair terms
(_decay_grad): the pair matrix inside the chunk, and the states entering and leaving the chunk
(the forward and the reversed scan's chunk states) for the pairs that cross its edges.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssm.ops import _library
from ssm.ops.python import reference

_NEG = -1e30  # log of zero for masked decays


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


def _runs(seq_idx, batch, L, device):
    """(B, L) int32 ids that change where seq_idx changes."""
    change = torch.zeros(batch, L, dtype=torch.bool, device=device)
    if seq_idx is not None:
        change[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return change.to(torch.int32).cumsum(1, dtype=torch.int32)


def _shifted_delta(delta, runs):
    """Δ_{t+1} at token t, 0 at a run's last token: the reversed scans' decays (before the flip)."""
    last = torch.ones_like(runs, dtype=torch.bool)
    last[:, :-1] = runs[:, 1:] != runs[:, :-1]
    shifted = torch.zeros_like(delta)
    shifted[:, :-1] = delta[:, 1:]
    return shifted.masked_fill(last[..., None], 0.0)


def _pad(t, Lp):
    # zeros after L along dim 1
    return None if t is None else F.pad(t, (0, 0) * (t.dim() - 2) + (0, Lp - t.shape[1]))


def _chunks(t, Q):
    # (B, Lp, ...) -> (B, nc, Q, ...)
    return t.view(t.shape[0], t.shape[1] // Q, Q, *t.shape[2:])


def _intra_pairs(C, B, dy, x, delta, cs, runs, H):
    """Per token k of each chunk: the sum of the chunk's pair terms with source s < k <= target t.
    All (B, nc, Q, ...) float32; returns (B, nc, Q, H)."""
    G = B.shape[-2]
    cb = torch.einsum("bctgn,bcsgn->bcgts", C, B).repeat_interleave(H // G, dim=2)  # (B, nc, H, Q, Q)
    Q = cs.shape[2]
    causal = torch.ones(Q, Q, dtype=torch.bool, device=cs.device).tril()
    same = (runs[:, :, :, None] == runs[:, :, None, :])[:, :, None] & causal  # (B, nc, 1, Q, Q)
    csh = cs.permute(0, 1, 3, 2)  # (B, nc, H, Q)
    decay = torch.exp(torch.where(same, csh[..., :, None] - csh[..., None, :], _NEG))
    pairs = cb * decay * delta.permute(0, 1, 3, 2)[..., None, :] * torch.einsum("bcthp,bcshp->bchts", dy, x)
    below = pairs.cumsum(-1)  # below[t, j] = sum over s <= j
    below = F.pad(below[..., :-1], (1, 0))  # sum over s < k
    return (below * causal).sum(-2).permute(0, 1, 3, 2)  # sum over t >= k


def _decay_grad(x, dy, B, C, delta, A, runs, h_fwd, h_rev, shifted, Q):
    """d(Δ_k A) (B, Lp, H) summed per chunk. Inputs padded to Lp = nc Q; h_fwd / h_rev (B, nc, H, P, N):
    the state entering each chunk (as its first run sees it) and the adjoint entering it from the
    right (as its last run sees it, before the decay of the token after the chunk)."""
    b, Lp, H, P = x.shape
    xc, dyc, Bc, Cc = (_chunks(t.to(h_fwd.dtype), Q) for t in (x, dy, B, C))
    dc, rc = _chunks(delta, Q), _chunks(runs, Q)
    cs = (dc * A).cumsum(2)  # (B, nc, Q, H)
    first, last = rc == rc[:, :, :1], rc == rc[:, :, -1:]  # (B, nc, Q)
    # the adjoint leaving the chunk to the right: a_{c1} dH_{c1}
    d_exit = torch.exp(_chunks(shifted, Q)[:, :, -1] * A)[..., None, None] * h_rev  # (B, nc, H, P, N)
    g = H // Bc.shape[-2]
    Bh, Ch = Bc.repeat_interleave(g, dim=3), Cc.repeat_interleave(g, dim=3)
    # pairs from before the chunk to t in it, and from s in it to after it
    y_in = torch.exp(cs) * first[..., None] * (torch.einsum("bchpn,bcthn->bcthp", h_fwd, Ch) * dyc).sum(-1)
    decay_out = torch.exp(cs[:, :, -1:] - cs) * last[..., None] * dc
    x_out = decay_out * (torch.einsum("bchpn,bcshn->bcshp", d_exit, Bh) * xc).sum(-1)
    through = torch.exp(cs[:, :, -1]) * (h_fwd * d_exit).sum((-1, -2)) * last[:, :, :1]  # (B, nc, H)
    inside = _intra_pairs(Cc, Bc, dyc, xc, dc, cs, rc, H)
    dl = inside + y_in.flip(2).cumsum(2).flip(2) + (x_out.cumsum(2) - x_out) + through[:, :, None]
    return dl.reshape(b, Lp, H)


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


def backward(scan, chunk, x, dt, A, B, C, D, z, dt_bias, init, seq_idx, dy, dfinal, softplus, lo, hi):
    """Gradients (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit) (None for absent inputs).
    ``scan(x, delta, A, B, C, init, seq_idx, unit, final)`` -> (y, final, chunk states (B, nc, H, P, N)
    entering each ``chunk``-token chunk as its first run sees it)."""
    batch, L, H, P = x.shape
    delta_graph, leaves = _delta_graph(dt, dt_bias, softplus, lo, hi)
    delta = delta_graph.detach()
    Lp = -(-L // chunk) * chunk
    # padded to whole chunks (Δ = 0, x = B = C = dy = 0: no effect), so that reversed chunks align
    seq_pad = None if seq_idx is None else torch.cat([seq_idx, seq_idx[:, -1:].expand(batch, Lp - L)], 1)
    runs = _runs(seq_pad, batch, Lp, x.device)
    xp, Bp, Cp, dp = _pad(x, Lp), _pad(B, Lp), _pad(C, Lp), _pad(delta, Lp)
    seq_p = None if seq_idx is None else runs
    y_hat, _, h_fwd = scan(xp, dp, A, Bp, Cp, init, seq_p, False, False)
    y_hat = y_hat[:, :L].float()
    dyf, dz, dD = _gate_grads(y_hat, x, D, z, dy)
    dy_s = dyf.to(x.dtype)
    dyp = _pad(dy_s, Lp)
    # adjoint scans in reversed time
    shifted = _shifted_delta(dp, runs)
    delta_r, seq_r = shifted.flip(1), None if seq_idx is None else runs.flip(1)
    o_r, dh_first, h_rev = scan(_flip(dyp), delta_r, A, _flip(Cp), _flip(Bp), dfinal, seq_r, True, init is not None)
    o = _flip(o_r)[:, :L].float()
    dfinal_t = None if dfinal is None else dfinal.transpose(-1, -2).contiguous()
    dbh = scan(_per_head(_flip(Cp), H), delta_r, A, _flip(dyp), _flip(xp), dfinal_t, seq_r, True, False)[0]
    dB = _group_sum(_flip(dbh)[:, :L].float() * delta[..., None], B.shape[2])
    init_t = None if init is None else init.transpose(-1, -2).contiguous()
    dC = _group_sum(scan(_per_head(B, H), delta, A, x, dy_s, init_t, seq_idx, False, False)[0].float(), C.shape[2])
    dinit = None if init is None else torch.exp(delta[:, 0] * A)[..., None, None] * dh_first
    # the decays
    dl = _decay_grad(xp, dyp, Bp, Cp, dp, A, runs, h_fwd.to(delta.dtype), h_rev.flip(1).to(delta.dtype),
                     shifted, chunk)[:, :L]
    xf = x.float()
    ddelta = A * dl + (xf * o).sum(-1)
    dA = (delta * dl).sum((0, 1))
    with _library._autograd_inside_op():
        dgrads = torch.autograd.grad(delta_graph, leaves, ddelta)
    dx = delta[..., None] * o if D is None else delta[..., None] * o + D * dyf
    return (dx.to(x.dtype), dgrads[0].to(dt.dtype), dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            dD, None if dz is None else dz.to(z.dtype), dgrads[1] if dt_bias is not None else None, dinit)
