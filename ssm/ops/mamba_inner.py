"""The Mamba-1 inner path (``mamba_ssm``'s ``mamba_inner_fn``): conv + silu, x_proj, dt_proj,
selective scan with z gating, out_proj, composed from the public ops so every backend and
autograd come with them."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ssm.ops import _checks
from ssm.ops.conv import dw_causal_conv
from ssm.ops.python import reference
from ssm.ops.selective_scan import selective_scan


def _rms(x: Tensor, weight: Optional[Tensor], eps: float) -> Tensor:
    """RMSNorm without bias over the last dim (float32 compute), or x when weight is None."""
    if weight is None:
        return x
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def _autocast(*weights):
    """Projection weights in the autocast dtype when autocast is on (as mamba_ssm does)."""
    dev = next(w.device.type for w in weights if w is not None)
    if not torch.is_autocast_enabled(dev):
        return weights
    dtype = torch.get_autocast_dtype(dev)
    return tuple(None if w is None else w.to(dtype) for w in weights)


def _split_bc(x_dbl, rank, N, L, B, C, B_proj_bias, C_proj_bias):
    """B and C (B, 1, N, L) from the x_proj output x_dbl (B*L, rank + 2N) unless given."""
    def take(cols, bias):
        t = cols if bias is None else cols + bias.to(cols.dtype)
        # (B*L, N) -> (B, 1, N, L)
        return t.reshape(-1, L, N).transpose(1, 2).unsqueeze(1)
    B = take(x_dbl[:, rank:rank + N], B_proj_bias) if B is None else B
    C = take(x_dbl[:, -N:], C_proj_bias) if C is None else C
    return B, C


def _inner(conv, scan, xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
           out_proj_bias, A, B, C, D, delta_bias, B_proj_bias, C_proj_bias, delta_softplus, rms):
    # xz (B, 2D, L); conv1d_weight (D, 1, W) or (D, W); A (D, N)
    x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias = _autocast(
        x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias)
    batch, _, L = xz.shape
    N, rank = A.shape[-1], delta_proj_weight.shape[1]
    x, z = xz.chunk(2, dim=1)
    w = conv1d_weight.reshape(conv1d_weight.shape[0], conv1d_weight.shape[-1])
    xc = conv(x, w, conv1d_bias, "silu")
    # x_dbl (B*L, rank + 2N)
    x_dbl = F.linear(xc.transpose(1, 2).reshape(batch * L, -1), x_proj_weight)
    dt = F.linear(x_dbl[:, :rank], delta_proj_weight)  # (B*L, D)
    B, C = _split_bc(x_dbl, rank, N, L, B, C, B_proj_bias, C_proj_bias)
    if rms is not None:
        b_w, c_w, dt_w, eps = rms
        B = _rms(B.transpose(-1, -2), b_w, eps).transpose(-1, -2) if b_w is not None else B
        C = _rms(C.transpose(-1, -2), c_w, eps).transpose(-1, -2) if c_w is not None else C
        dt = _rms(dt, dt_w, eps)
    delta = dt.reshape(batch, L, -1).transpose(1, 2)
    y = scan(xc, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def _check_inner(xz, conv1d_weight, x_proj_weight, delta_proj_weight, out_proj_weight, A):
    _checks.tensor("xz", xz, ndim=3)
    if xz.shape[1] % 2:
        raise ValueError(f"xz: expected an even channel count (x and z halves), got shape {tuple(xz.shape)}")
    dim = xz.shape[1] // 2
    _checks.tensor("conv1d_weight", conv1d_weight, ndim=(2, 3), device=xz.device)
    if conv1d_weight.shape[0] != dim:
        raise ValueError(f"conv1d_weight: expected {dim} channels, got shape {tuple(conv1d_weight.shape)}")
    _checks.tensor("A", A, shape=(dim, None), device=xz.device)
    _checks.tensor("delta_proj_weight", delta_proj_weight, shape=(dim, None), device=xz.device)
    rank, N = delta_proj_weight.shape[1], A.shape[1]
    _checks.tensor("x_proj_weight", x_proj_weight, shape=(None, dim), device=xz.device)
    if x_proj_weight.shape[0] < rank + 2 * N:
        raise ValueError(f"x_proj_weight: expected at least {rank + 2 * N} rows (dt_rank + 2 d_state), "
                         f"got shape {tuple(x_proj_weight.shape)}")
    _checks.tensor("out_proj_weight", out_proj_weight, shape=(None, dim), device=xz.device)


def mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                   out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None,
                   delta_softplus=True, checkpoint_lvl=1, b_rms_weight=None, c_rms_weight=None,
                   dt_rms_weight=None, b_c_dt_rms_eps=1e-6):
    """Mamba-1 mixer body: xz (B, 2D, L) -> out_proj output (B, L, out_dim).

    x, z = halves of xz; x = silu(conv(x)); x_dbl = x_proj(x); delta = delta_proj(x_dbl[:, :rank]);
    B, C from x_dbl unless given (+ B/C_proj_bias), optional RMSNorm of B, C, delta; selective scan
    with z, D, delta_bias, softplus; out_proj. ``checkpoint_lvl`` is accepted for compatibility:
    the ops' backwards recompute what they need."""
    _check_inner(xz, conv1d_weight, x_proj_weight, delta_proj_weight, out_proj_weight, A)
    rms = (b_rms_weight, c_rms_weight, dt_rms_weight, b_c_dt_rms_eps)
    return _inner(dw_causal_conv, selective_scan, xz, conv1d_weight, conv1d_bias, x_proj_weight,
                  delta_proj_weight, out_proj_weight, out_proj_bias, A, B, C, D, delta_bias, B_proj_bias,
                  C_proj_bias, delta_softplus, rms)


def mamba_inner_ref(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                    out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None,
                    delta_softplus=True):
    """The unfused pure PyTorch composition of :func:`mamba_inner_fn` (reference ops)."""
    _check_inner(xz, conv1d_weight, x_proj_weight, delta_proj_weight, out_proj_weight, A)
    return _inner(reference.dw_causal_conv, reference.selective_scan, xz, conv1d_weight, conv1d_bias,
                  x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias, A, B, C, D, delta_bias,
                  B_proj_bias, C_proj_bias, delta_softplus, None)
