"""Depthwise causal conv over the sequence (Mamba's short conv), forward, backward and the
one-step decode update. Names of the ``causal_conv1d`` package are provided too."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ssm.ops import _checks, _kernels, _library
from ssm.ops.python import reference
from ssm.utils import dispatch

_ACTIVATIONS = (None, "silu", "swish")


# ---- forward ---------------------------------------------------------------------------------

def _fwd_impl(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
              initial_states: Optional[Tensor], silu: bool, return_final_states: bool):
    # x (B, D, L); weight (D, W) float32; bias (D,) float32; initial_states (B, D, W-1)
    backend = dispatch.select_backend("dw_causal_conv", x.device, lambda b: _kernels.kernel_reason(b, "dw_causal_conv_fwd", x))
    if backend == "reference":
        out = reference.dw_causal_conv(x, weight, bias, "silu" if silu else None, seq_idx=seq_idx,
                                       initial_states=initial_states, return_final_states=return_final_states)
        y, final = out if return_final_states else (out, None)
        # contiguous like the kernels' outputs, as the fake implementation says
        return y.contiguous(), _library.empty_if_none(None if final is None else final.contiguous(), x)
    B, D, L = x.shape
    W = weight.shape[1]
    y = _kernels.empty((B, D, L), x)
    final = _kernels.empty((B, D, W - 1), x) if return_final_states else None
    seq_idx = None if seq_idx is None else seq_idx.to(torch.int32)
    _kernels.module(backend).dw_causal_conv_fwd(
        _kernels.dtype_code(x), B, D, L, W, _kernels.ref(x), _kernels.ref(weight), _kernels.ref(bias),
        _kernels.ref(seq_idx), _kernels.ref(initial_states), _kernels.ref(y), _kernels.ref(final),
        silu, _kernels.exec_arg(backend, x))
    return y, _library.empty_if_none(final, x)


@torch.library.custom_op("ssm::dw_causal_conv_fwd", mutates_args=())
def _fwd_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
            initial_states: Optional[Tensor], silu: bool, return_final_states: bool) -> tuple[Tensor, Tensor]:
    return _fwd_impl(x, weight, bias, seq_idx, initial_states, silu, return_final_states)


@_fwd_op.register_fake
def _(x, weight, bias, seq_idx, initial_states, silu, return_final_states):
    B, D, _ = x.shape
    return x.new_empty(x.shape), x.new_empty((B, D, weight.shape[1] - 1) if return_final_states else (0,))


# ---- backward --------------------------------------------------------------------------------

def _bwd_impl(x, weight, bias, seq_idx, initial_states, dy, dfinal, silu, return_final_states):
    def forward(x, weight, bias, initial_states):
        out = reference.dw_causal_conv(x, weight, bias, "silu" if silu else None, seq_idx=seq_idx,
                                       initial_states=initial_states, return_final_states=return_final_states)
        return out if return_final_states else (out,)
    grads = _library.reference_vjp(forward, (x, weight, bias, initial_states),
                                   (dy, dfinal if return_final_states else None))
    return tuple(_library.empty_if_none(g, x) for g in grads)


@torch.library.custom_op("ssm::dw_causal_conv_bwd", mutates_args=())
def _bwd_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
            initial_states: Optional[Tensor], dy: Tensor, dfinal: Tensor, silu: bool,
            return_final_states: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dispatch.select_backend("dw_causal_conv_bwd", x.device, lambda b: f"no {b} backward kernel for dw_causal_conv yet")
    return _bwd_impl(x, weight, bias, seq_idx, initial_states, dy, dfinal, silu, return_final_states)


@_bwd_op.register_fake
def _(x, weight, bias, seq_idx, initial_states, dy, dfinal, silu, return_final_states):
    empty = x.new_empty(0)
    return (torch.empty_like(x), torch.empty_like(weight),
            empty if bias is None else torch.empty_like(bias),
            empty if initial_states is None else torch.empty_like(initial_states))


def _setup_context(ctx, inputs, output):
    x, weight, bias, seq_idx, initial_states, silu, return_final_states = inputs
    ctx.save_for_backward(x, weight, bias, seq_idx, initial_states)
    ctx.flags = (silu, return_final_states)


def _backward(ctx, dy, dfinal):
    x, weight, bias, seq_idx, initial_states = ctx.saved_tensors
    silu, return_final_states = ctx.flags
    dx, dw, db, dinit = _bwd_op(x, weight, bias, seq_idx, initial_states, dy, dfinal, silu, return_final_states)
    return (dx, dw, None if bias is None else db, None, None if initial_states is None else dinit, None, None)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ---- public ----------------------------------------------------------------------------------

def _check_conv_args(x, weight, bias, activation, seq_idx, initial_states):
    _checks.tensor("x", x, ndim=3)
    B, D, L = x.shape
    _checks.tensor("weight", weight, ndim=(2, 3), dtypes=_checks.FLOAT_DTYPES, device=x.device)
    if weight.dim() == 3 and weight.shape[1] != 1:
        raise ValueError(f"weight: expected shape ({D}, W) or ({D}, 1, W), got {tuple(weight.shape)}")
    if weight.shape[0] != D:
        raise ValueError(f"weight: expected {D} channels to match x (B, D, L) = {tuple(x.shape)}, "
                         f"got shape {tuple(weight.shape)}")
    W = weight.shape[-1]
    if W < 1:
        raise ValueError(f"weight: expected a conv width >= 1, got shape {tuple(weight.shape)}")
    _checks.tensor("bias", bias, shape=(D,), device=x.device, optional=True)
    _checks.choice("activation", activation, _ACTIVATIONS)
    _checks.seq_idx(seq_idx, B, L, x.device)
    _checks.tensor("initial_states", initial_states, shape=(B, D, W - 1), dtypes=(x.dtype,),
                   device=x.device, optional=True)
    return W


def dw_causal_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, activation: Optional[str] = "silu",
                   *, seq_idx: Optional[Tensor] = None, initial_states: Optional[Tensor] = None,
                   return_final_states: bool = False):
    """Depthwise causal conv: x (B, D, L), weight (D, W) or (D, 1, W), bias (D,) -> y (B, D, L).

    y[b, d, t] = bias[d] + sum_k weight[d, k] * x[b, d, t - W + 1 + k], then silu when
    ``activation`` is "silu"/"swish". ``seq_idx`` (B, L) keeps packed sequences apart;
    ``initial_states`` (B, D, W-1) are the inputs before token 0. With
    ``return_final_states`` returns (y, final_states (B, D, W-1)), the window a next call needs.
    """
    W = _check_conv_args(x, weight, bias, activation, seq_idx, initial_states)
    w = weight.reshape(weight.shape[0], W).float().contiguous()
    b = None if bias is None else bias.float()
    silu = activation is not None
    args = (x, w, b, seq_idx, initial_states, silu, return_final_states)
    if _library.use_custom_op(x, w, b, initial_states):
        y, final = _fwd_op(*args)
    else:
        y, final = _fwd_impl(*args)
    return (y, final) if return_final_states else y


def causal_conv1d_fn(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, seq_idx: Optional[Tensor] = None,
                     initial_states: Optional[Tensor] = None, return_final_states: bool = False,
                     final_states_out: Optional[Tensor] = None, activation: Optional[str] = None):
    """``causal_conv1d.causal_conv1d_fn``: same math as :func:`dw_causal_conv`, activation off by default."""
    out = dw_causal_conv(x, weight, bias, activation, seq_idx=seq_idx, initial_states=initial_states,
                         return_final_states=return_final_states or final_states_out is not None)
    if final_states_out is not None:
        final_states_out.copy_(out[1])
        return (out[0], final_states_out) if return_final_states else out[0]
    return out
