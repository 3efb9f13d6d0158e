"""Mamba-2's fused block path, ``mamba_split_conv1d_scan_combined``: split the in-projection
output, causal conv on xBC, SSD scan, gated RMSNorm, out-projection. Built from the public
ops (dw_causal_conv, ssd_chunk_scan, the gated RMSNorm, F.linear), so every backend and the
autograd of each piece carry over; no channel-count restriction."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ssm.ops import _checks
from ssm.ops.conv import dw_causal_conv
from ssm.ops.gated_norm import rmsnorm_fn
from ssm.ops.python import reference
from ssm.ops.ssd import ssd_chunk_scan

_INF = float("inf")
_ACTIVATIONS = (None, "silu", "swish")


def _split_sizes(zxbcdt, conv1d_weight, A, D, headdim, ngroups):
    """(d_nonssm, dim, dstate, nheads, headdim) of the zxbcdt layout [zx0, z, xBC, dt]."""
    _checks.tensor("zxbcdt", zxbcdt, ndim=3)
    _checks.tensor("conv1d_weight", conv1d_weight, ndim=(2, 3), device=zxbcdt.device)
    _checks.tensor("A", A, ndim=1, device=zxbcdt.device)
    _checks.tensor("D", D, ndim=(1, 2), device=zxbcdt.device)
    _checks.positive_int("ngroups", ngroups)
    nheads = A.shape[0]
    if D.dim() == 1 and headdim is None:
        raise ValueError("headdim: needed when D has shape (nheads,)")
    headdim = D.shape[1] if D.dim() == 2 else headdim
    _checks.positive_int("headdim", headdim)
    dim = nheads * headdim
    conv_dim = conv1d_weight.shape[0]
    if (conv_dim - dim) <= 0 or (conv_dim - dim) % (2 * ngroups) != 0:
        raise ValueError(f"conv1d_weight: {conv_dim} channels do not hold x ({dim}) plus B and C "
                         f"for {ngroups} groups")
    dstate = (conv_dim - dim) // (2 * ngroups)
    rest = zxbcdt.shape[-1] - 2 * dim - 2 * ngroups * dstate - nheads
    if rest < 0 or rest % 2 != 0:
        raise ValueError(f"zxbcdt: last dim {zxbcdt.shape[-1]} does not split into [zx0, z ({dim}), "
                         f"xBC ({conv_dim}), dt ({nheads})]")
    return rest // 2, dim, dstate, nheads, headdim


def _swiglu_prepend(zx0: Tensor, out: Tensor, d_nonssm: int) -> Tensor:
    # zx0 (B, L, 2 d_nonssm): silu(first half) * second half, placed before the SSM output
    if d_nonssm == 0:
        return out
    return torch.cat([F.silu(zx0[..., :d_nonssm]) * zx0[..., d_nonssm:], out], dim=-1)


def mamba_split_conv1d_scan_combined(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size,
                                     initial_states=None, seq_idx=None, dt_limit=(0.0, _INF),
                                     return_final_states=False, activation="silu", rmsnorm_weight=None,
                                     rmsnorm_eps=1e-6, outproj_weight=None, outproj_bias=None, headdim=None,
                                     ngroups=1, norm_before_gate=True, state_dtype=None):
    """``mamba_ssm``'s fused Mamba-2 path. zxbcdt (B, L, 2 d_nonssm + 2 dim + 2 G N + H) ->
    out (B, L, d_out) [, final_states (B, H, P, N) float32]. ``state_dtype`` is accepted for
    compatibility: states stay float32 here."""
    _checks.choice("activation", activation, _ACTIVATIONS)
    d_nonssm, dim, dstate, nheads, headdim = _split_sizes(zxbcdt, conv1d_weight, A, D, headdim, ngroups)
    batch, L, _ = zxbcdt.shape
    gn = ngroups * dstate
    zx0, z, xBC, dt = torch.split(zxbcdt, [2 * d_nonssm, dim, dim + 2 * gn, nheads], dim=-1)
    # xBC (B, L, dim + 2 G N) -> conv over L in (B, channels, L), made contiguous along L for the
    # conv kernel (and because the conv's fake output is laid out like its input)
    weight = conv1d_weight.reshape(conv1d_weight.shape[0], -1)
    xBC = xBC.transpose(1, 2).contiguous()
    xBC = dw_causal_conv(xBC, weight, conv1d_bias, activation, seq_idx=seq_idx).transpose(1, 2)
    x, B, C = torch.split(xBC, [dim, gn, gn], dim=-1)
    out = ssd_chunk_scan(x.reshape(batch, L, nheads, headdim), dt, A, B.reshape(batch, L, ngroups, dstate),
                         C.reshape(batch, L, ngroups, dstate), chunk_size, D=D,
                         z=z.reshape(batch, L, nheads, headdim) if rmsnorm_weight is None else None,
                         initial_states=initial_states, dt_bias=dt_bias, dt_softplus=True, dt_limit=dt_limit,
                         seq_idx=seq_idx, return_final_states=return_final_states)
    out, final = out if return_final_states else (out, None)
    out = out.reshape(batch, L, dim)
    if rmsnorm_weight is not None:
        out = rmsnorm_fn(out, rmsnorm_weight, None, z=z, eps=rmsnorm_eps, group_size=dim // ngroups,
                         norm_before_gate=norm_before_gate)
    out = _swiglu_prepend(zx0, out, d_nonssm)
    if outproj_weight is not None:
        out = F.linear(out, outproj_weight, outproj_bias)
    return (out, final) if return_final_states else out


def mamba_split_conv1d_scan_ref(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size,
                                dt_limit=(0.0, _INF), activation="silu", rmsnorm_weight=None, rmsnorm_eps=1e-6,
                                outproj_weight=None, outproj_bias=None, headdim=None, ngroups=1,
                                norm_before_gate=True):
    """``mamba_ssm``'s unfused reference of the same path, from the reference ops only."""
    _checks.choice("activation", activation, _ACTIVATIONS)
    d_nonssm, dim, dstate, nheads, headdim = _split_sizes(zxbcdt, conv1d_weight, A, D, headdim, ngroups)
    batch, L, _ = zxbcdt.shape
    gn = ngroups * dstate
    zx0, z, xBC, dt = torch.split(zxbcdt, [2 * d_nonssm, dim, dim + 2 * gn, nheads], dim=-1)
    weight = conv1d_weight.reshape(conv1d_weight.shape[0], -1)
    xBC = reference.dw_causal_conv(xBC.transpose(1, 2), weight, conv1d_bias,
                                   "silu" if activation else None).transpose(1, 2)
    x, B, C = torch.split(xBC, [dim, gn, gn], dim=-1)
    out = reference.ssd_chunk_scan(x.reshape(batch, L, nheads, headdim), dt, A,
                                   B.reshape(batch, L, ngroups, dstate), C.reshape(batch, L, ngroups, dstate),
                                   chunk_size, D=D, z=z.reshape(batch, L, nheads, headdim)
                                   if rmsnorm_weight is None else None, dt_bias=dt_bias, dt_softplus=True,
                                   dt_limit=dt_limit).reshape(batch, L, dim)
    if rmsnorm_weight is not None:
        out = reference.gated_rms_norm(out, rmsnorm_weight, None, z=z, eps=rmsnorm_eps,
                                       group_size=dim // ngroups, norm_before_gate=norm_before_gate)
    out = _swiglu_prepend(zx0, out, d_nonssm)
    return out if outproj_weight is None else F.linear(out, outproj_weight, outproj_bias)
