"""Depthwise causal conv over the sequence (Mamba's short conv), forward, backward and the
one-step decode update. Names of the ``causal_conv1d`` package are provided too."""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from ssm.ops import _checks, _kernels, _library
from ssm.ops.python import reference
from ssm.utils import dispatch

_ACTIVATIONS = (None, "silu", "swish")

# Devices where a channels-last x (stride 1 along D, e.g. the fused Mamba-2 path's xBC slice) gets
# y and dx in its layout: CUDA, whose module has kernels for it (the CPU kernels run along L, so
# outputs stay contiguous there). SSM_CONV_CHANNELS_LAST=0 empties it (the general kernels, as before).
CHANNELS_LAST_DEVICES = ("cuda",) if os.environ.get("SSM_CONV_CHANNELS_LAST", "1") != "0" else ()


def _channels_last(x: Tensor) -> bool:
    return x.device.type in CHANNELS_LAST_DEVICES and x.stride(1) == 1 and x.stride(2) != 1


def _like_x(x: Tensor, fake: bool = False) -> Tensor:
    """An output of x's (B, D, L) shape, channels-last when x is (a kernel buffer, or a fake's)."""
    B, D, L = x.shape
    if not _channels_last(x):
        return _library.empty_like(x) if fake else _kernels.empty((B, D, L), x)
    return (x.new_empty((B, L, D)) if fake else _kernels.empty((B, L, D), x)).transpose(1, 2)


def _in_layout(t: Tensor, x: Tensor) -> Tensor:
    """t (x's shape) in the layout _like_x gives (the reference path's outputs)."""
    B, D, L = x.shape
    if t.stride() == ((L * D, 1, D) if _channels_last(x) else (D * L, L, 1)):
        return t
    return _like_x(x).copy_(t)


def _cl_bwd_workspace(backend: str, x: Tensor, W: int):
    """The channels-last backward's workspace (batch * ceil(L / 128) rows of (W+1, D) float32
    partials; ssm/ops/cuda/dw_causal_conv_cl.cuh) when that kernel applies, else None."""
    if not _channels_last(x) or x.numel() == 0 or _kernels.kernel_reason(backend, "dw_causal_conv_bwd_cl", x):
        return None
    B, D, L = x.shape
    parts = B * ((L + 127) // 128)
    return _kernels.empty((parts, W + 1, D), x, torch.float32)


# ---- forward ---------------------------------------------------------------------------------

def _fwd_impl(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
              initial_states: Optional[Tensor], silu: bool, return_final_states: bool):
    # x (B, D, L); weight (D, W) float32; bias (D,) float32; initial_states (B, D, W-1)
    backend = dispatch.select_backend("dw_causal_conv", x.device, lambda b: _kernels.kernel_reason(b, "dw_causal_conv_fwd", x))
    if backend == "reference":
        out = reference.dw_causal_conv(x, weight, bias, "silu" if silu else None, seq_idx=seq_idx,
                                       initial_states=initial_states, return_final_states=return_final_states)
        y, final = out if return_final_states else (out, None)
        return _in_layout(y, x), _library.empty_if_none(None if final is None else final.contiguous(), x)
    B, D, L = x.shape
    W = weight.shape[1]
    y = _like_x(x)
    final = _kernels.empty((B, D, W - 1), x) if return_final_states else None
    seq_idx = None if seq_idx is None else seq_idx.to(torch.int32)
    _kernels.module(backend).dw_causal_conv_fwd(
        _kernels.dtype_code(x), B, D, L, W, _kernels.ref(x), _kernels.ref(weight), _kernels.ref(bias),
        _kernels.ref(seq_idx), _kernels.ref(initial_states), _kernels.ref(y), _kernels.ref(final),
        silu, _kernels.exec_arg(backend, x))
    return y, _library.empty_if_none(final, x)


@_library.custom_op("ssm::dw_causal_conv_fwd", mutates_args=(), exact_layout=True)
def _fwd_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
            initial_states: Optional[Tensor], silu: bool, return_final_states: bool) -> tuple[Tensor, Tensor]:
    return _fwd_impl(x, weight, bias, seq_idx, initial_states, silu, return_final_states)


@_fwd_op.register_fake
def _(x, weight, bias, seq_idx, initial_states, silu, return_final_states):
    B, D, _ = x.shape
    return _like_x(x, fake=True), x.new_empty((B, D, weight.shape[1] - 1) if return_final_states else (0,))


# ---- backward --------------------------------------------------------------------------------

def _bwd_reference(x, weight, bias, seq_idx, initial_states, dy, dfinal, silu, return_final_states):
    def forward(x, weight, bias, initial_states):
        out = reference.dw_causal_conv(x, weight, bias, "silu" if silu else None, seq_idx=seq_idx,
                                       initial_states=initial_states, return_final_states=return_final_states)
        return out if return_final_states else (out,)
    grads = _library.reference_vjp(forward, (x, weight, bias, initial_states),
                                   (dy, dfinal if return_final_states else None))
    grads = (_in_layout(grads[0], x), *(None if g is None else g.contiguous() for g in grads[1:]))
    # reference gradients can be views of one buffer, which a custom op may not return
    return tuple(_library.empty_if_none(g, x).clone() if g is not None and g._base is not None
                 else _library.empty_if_none(g, x) for g in grads)


def _bwd_impl(x, weight, bias, seq_idx, initial_states, dy, dfinal, silu, return_final_states):
    # x, dy (B, D, L); dfinal (B, D, W-1) -> dx, dweight (D, W) float32, dbias, dinitial_states
    backend = dispatch.select_backend("dw_causal_conv_bwd", x.device,
                                      lambda b: _kernels.kernel_reason(b, "dw_causal_conv_bwd", x, dy))
    if backend == "reference":
        return _bwd_reference(x, weight, bias, seq_idx, initial_states, dy, dfinal, silu, return_final_states)
    B, D, L = x.shape
    W = weight.shape[1]
    dx = _like_x(x)
    dw = _kernels.empty((D, W), weight)
    db = None if bias is None else _kernels.empty((D,), bias)
    dinit = None if initial_states is None else _kernels.empty((B, D, W - 1), x)
    seq_idx = None if seq_idx is None else seq_idx.to(torch.int32)
    dfinal = dfinal.to(x.dtype) if return_final_states else None
    dy = dy.to(x.dtype)  # kept alive until the kernel runs (refs hold only its address)
    refs = (_kernels.dtype_code(x), B, D, L, W, _kernels.ref(x), _kernels.ref(weight), _kernels.ref(bias),
            _kernels.ref(seq_idx), _kernels.ref(initial_states), _kernels.ref(dy), _kernels.ref(dfinal),
            _kernels.ref(dx), _kernels.ref(dw), _kernels.ref(db), _kernels.ref(dinit))
    ws = _cl_bwd_workspace(backend, x, W)
    if ws is None:
        _kernels.module(backend).dw_causal_conv_bwd(*refs, silu, _kernels.exec_arg(backend, x))
    else:
        _kernels.module(backend).dw_causal_conv_bwd_cl(*refs, _kernels.ref(ws), ws.shape[0], silu,
                                                       _kernels.exec_arg(backend, x))
    return dx, dw, _library.empty_if_none(db, x), _library.empty_if_none(dinit, x)


@_library.custom_op("ssm::dw_causal_conv_bwd", mutates_args=(), exact_layout=True)
def _bwd_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
            initial_states: Optional[Tensor], dy: Tensor, dfinal: Tensor, silu: bool,
            return_final_states: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _bwd_impl(x, weight, bias, seq_idx, initial_states, dy, dfinal, silu, return_final_states)


@_bwd_op.register_fake
def _(x, weight, bias, seq_idx, initial_states, dy, dfinal, silu, return_final_states):
    empty = x.new_empty(0)
    return (_like_x(x, fake=True), _library.empty_like(weight),
            empty if bias is None else _library.empty_like(bias),
            empty if initial_states is None else _library.empty_like(initial_states))


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


# ---- eager fast path of the forward without autograd (see state_step.py: plans per signature) --

_fwd_plans = _kernels.PlanCache()


def _make_fwd_plan(x, weight, bias, seq_idx, initial_states, return_final_states, activation):
    """The plan of a call that passed the checks, or False for the general path (the reference,
    int64 seq_idx, weights that are not float32 contiguous, an empty or channels-last x)."""
    if x.numel() == 0 or (seq_idx is not None and seq_idx.dtype != torch.int32) or _channels_last(x):
        return False
    if any(t is not None and (t.dtype != torch.float32 or not t.is_contiguous()) for t in (weight, bias)):
        return False
    backend = dispatch.select_backend("dw_causal_conv", x.device,
                                      lambda b: _kernels.kernel_reason(b, "dw_causal_conv_fwd", x))
    if backend == "reference":
        return False
    k = _kernels
    B, D, L = x.shape
    W = weight.shape[-1]
    final = (B, D, W - 1) if return_final_states else None
    modes = (k.AS_IS, k.AS_IS if weight.dim() == 2 else k.DROP_MID, k.AS_IS, k.AS_IS, k.AS_IS, k.AS_IS, k.AS_IS)
    tails = k.ref_tails(modes, (x, weight, bias, seq_idx, initial_states, k.empty(x.shape, x),
                                None if final is None else k.empty(final, x)))
    head = (k.dtype_code(x), B, D, L, W)
    return (backend, k.module(backend).dw_causal_conv_fwd, head, tails, k.output_spec(x),
            None if final is None else (final, x.dtype, x.device),
            k.prepare(backend, "dw_causal_conv_fwd", tails, lambda v: (*head, *v, activation is not None)),
            k.planned_threads(x.numel()))


def _run_fwd_plan(plan, x, weight, bias, activation, seq_idx, initial_states):
    backend, kernel, head, tails, y_spec, final_spec, prepared, threads = plan
    k = _kernels
    y = k.planned_output(x, y_spec)
    final = None if final_spec is None else k.new_empty(*final_spec)
    if prepared is not None:  # (the plan's key holds the activation)
        prepared(x, weight, bias, seq_idx, initial_states, y, final, threads or torch.get_num_threads())
    else:
        kernel(*head, *k.planned_refs(tails, (x, weight, bias, seq_idx, initial_states, y, final)),
               activation is not None, k.exec_arg(backend, x))
    return y if final is None else (y, final)


# ---- eager fast path with autograd: the plain call (no seq_idx, initial or final states) with the
# forward plan and a backward launched straight from it, in one autograd.Function (the general path
# costs the checks, the custom op's layers and their backend and dtype lookups on every call) --------

def _make_grad_plan(x, weight, bias, seq_idx, initial_states, return_final_states, activation):
    """(forward plan, backward kernel) of a plain call with autograd, or False for the general path."""
    if seq_idx is not None or initial_states is not None or return_final_states:
        return False
    fwd = _make_fwd_plan(x, weight, bias, None, None, False, activation)
    if not fwd or dispatch.select_backend("dw_causal_conv_bwd", x.device,
                                          lambda b: _kernels.kernel_reason(b, "dw_causal_conv_bwd", x)) != fwd[0]:
        return False
    return fwd, _kernels.module(fwd[0]).dw_causal_conv_bwd


def _run_bwd_plan(plan, x, weight, bias, dy, silu):
    # dy (B, D, L) -> dx like the forward's y, dweight like weight ((D, W) or (D, 1, W)), dbias (D,) float32
    (backend, _, head, tails, y_spec, *_), kernel = plan
    k = _kernels
    dy = dy if dy.dtype == x.dtype else dy.to(x.dtype)
    # weight and bias are float32 contiguous (the plan's condition): empty_like is the cheapest allocation
    dx, dw = k.planned_output(x, y_spec), k.planned_output(weight, None)
    db = None if bias is None else k.planned_output(bias, None)
    x_ref, w_ref, b_ref = k.planned_refs(tails[:3], (x, weight, bias))
    kernel(*head, x_ref, w_ref, b_ref, None, None, k.ref(dy), None, (dx.data_ptr(),) + tails[5],
           (dw.data_ptr(),) + tails[1], None if db is None else (db.data_ptr(),) + tails[2], None, silu,
           k.exec_arg(backend, x))
    return dx, dw, db


def _planned_forward(ctx, x, weight, bias, plan, activation):
    ctx.save_for_backward(x, weight, bias)
    ctx.plan, ctx.silu = plan, activation is not None
    return _run_fwd_plan(plan[0], x, weight, bias, activation, None, None)


def _planned_backward(ctx, dy):
    x, weight, bias = ctx.saved_tensors
    return (*_run_bwd_plan(ctx.plan, x, weight, bias, dy, ctx.silu), None, None)


# named like the op's eager Function (_library): the same kernels, the same gradients
_PlannedConv = type("Eager_ssm_dw_causal_conv_planned", (torch.autograd.Function,),
                    {"forward": staticmethod(_planned_forward), "backward": staticmethod(_planned_backward)})


def dw_causal_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, activation: Optional[str] = "silu",
                   *, seq_idx: Optional[Tensor] = None, initial_states: Optional[Tensor] = None,
                   return_final_states: bool = False):
    """Depthwise causal conv: x (B, D, L), weight (D, W) or (D, 1, W), bias (D,) -> y (B, D, L).

    y[b, d, t] = bias[d] + sum_k weight[d, k] * x[b, d, t - W + 1 + k], then silu when
    ``activation`` is "silu"/"swish". ``seq_idx`` (B, L) keeps packed sequences apart;
    ``initial_states`` (B, D, W-1) are the inputs before token 0. With
    ``return_final_states`` returns (y, final_states (B, D, W-1)), the window a next call needs.
    """
    grad = _library.needs_autograd(x, weight, bias, initial_states)
    eager = not torch.compiler.is_compiling() and (not grad or _library.EAGER_DIRECT)
    sig, plan = _fwd_plans.find((type(activation), activation, bool(return_final_states), grad),
                                (x, weight, bias, seq_idx, initial_states)) if eager else (None, None)
    if plan:
        if grad:
            return _PlannedConv.apply(x, weight, bias, plan, activation)
        return _run_fwd_plan(plan, x, weight, bias, activation, seq_idx, initial_states)
    W = _check_conv_args(x, weight, bias, activation, seq_idx, initial_states)
    if sig is not None:
        make = _make_grad_plan if grad else _make_fwd_plan
        _fwd_plans[sig] = make(x, weight, bias, seq_idx, initial_states, return_final_states, activation)
    w = _kernels.float32_contiguous(weight if weight.dim() == 2 else weight.reshape(weight.shape[0], W))
    b = _kernels.float32_contiguous(bias)
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


# ---- one-step (or few-step) decode update with a rolling conv_state ---------------------------

def _update_torch(x, conv_state, weight, bias, silu, indices, cache_seqlens):
    """The update in plain torch without host syncs (CUDA-graph capturable), for the
    reference backend with conv_state_indices or cache_seqlens. Shift register: the window
    before the new tokens is the state's last W-1 entries and the state keeps the last S of
    [state, x]. Ring (cache_seqlens): the window is at (cache_seqlens[b] - W + 1 + i) mod S and
    token t is written at (cache_seqlens[b] + t) mod S. Negative indices are padding rows."""
    B, D, L = x.shape
    W, S = weight.shape[1], conv_state.shape[-1]
    rows = torch.arange(B, device=x.device) if indices is None else indices.long()
    valid = rows >= 0
    rows = rows.clamp(min=0)
    # state rows (B, D, S), history (B, D, W-1), new state rows (B, D, S)
    old = conv_state[rows]
    if cache_seqlens is None:
        hist = old[..., S - (W - 1):]
        new_rows = torch.cat([old, x.to(old.dtype)], -1)[..., L:]
    else:
        pos = cache_seqlens.long()[:, None] + torch.arange(-(W - 1), L, device=x.device)[None, :]
        hist = old.gather(2, pos[:, None, :W - 1].remainder(S).expand(B, D, W - 1))
        # only the last min(L, S) tokens survive: writing just those keeps the scatter free of duplicates
        n = min(L, S)
        new_rows = old.scatter(2, pos[:, None, W - 1 + L - n:].remainder(S).expand(B, D, n), x[..., L - n:].to(old.dtype))
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    # window (B, D, W-1+L) -> y (B, D, L)
    xs = torch.cat([hist.to(ct), x.to(ct)], -1)
    y = torch.nn.functional.conv1d(xs, weight.to(ct)[:, None, :], None if bias is None else bias.to(ct), groups=D)
    y = torch.nn.functional.silu(y) if silu else y
    _write_rows(conv_state, rows, valid, new_rows)
    return (y * valid[:, None, None]).to(x.dtype)


def _write_rows(conv_state, rows, valid, new_rows):
    """conv_state[rows[b]] = new_rows[b] for valid b, without a host sync: each state row
    takes the last valid batch entry that targets it."""
    B = rows.shape[0]
    owner = torch.full((conv_state.shape[0],), -1, dtype=torch.long, device=rows.device)
    owner = owner.scatter_reduce(0, rows, torch.where(valid, torch.arange(B, device=rows.device), -1), "amax")
    keep = (owner >= 0)[:, None, None]
    conv_state.copy_(torch.where(keep, new_rows[owner.clamp(min=0)], conv_state))


def _update_reason(backend, x, conv_state):
    reason = _kernels.kernel_reason(backend, "dw_causal_conv_update", x, conv_state)
    if reason is None and conv_state.dtype != x.dtype:
        reason = f"conv_state dtype {conv_state.dtype} differs from x dtype {x.dtype}"
    return reason


def _update_impl(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool,
                 conv_state_indices: Optional[Tensor], cache_seqlens: Optional[Tensor]) -> Tensor:
    # x (B, D, L); conv_state (Bs, D, S), any strides; weight (D, W) float32 -> y (B, D, L)
    backend = dispatch.select_backend("dw_causal_conv_update", x.device,
                                      lambda b: _update_reason(b, x, conv_state))
    if backend == "reference":
        if cache_seqlens is not None or conv_state_indices is not None:
            return _update_torch(x, conv_state, weight, bias, silu, conv_state_indices, cache_seqlens)
        return reference.dw_causal_conv_update(x, conv_state, weight, bias, "silu" if silu else None,
                                               conv_state_indices=conv_state_indices)
    B, D, L = x.shape
    y = _kernels.empty((B, D, L), x)
    _kernels.module(backend).dw_causal_conv_update(
        _kernels.dtype_code(x), B, D, L, weight.shape[1], conv_state.shape[0], conv_state.shape[2],
        _kernels.ref(x), _kernels.ref(conv_state), _kernels.ref(weight), _kernels.ref(bias),
        _kernels.ref(_int32(conv_state_indices)), _kernels.ref(_int32(cache_seqlens)), _kernels.ref(y), silu,
        _kernels.exec_arg(backend, x))
    return y


def _int32(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.to(torch.int32)


@_library.custom_op("ssm::dw_causal_conv_update", mutates_args=("conv_state",))
def _update_op(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool,
               conv_state_indices: Optional[Tensor], cache_seqlens: Optional[Tensor]) -> Tensor:
    return _update_impl(x, conv_state, weight, bias, silu, conv_state_indices, cache_seqlens)


@_update_op.register_fake
def _(x, conv_state, weight, bias, silu, conv_state_indices, cache_seqlens):
    return _library.empty_like(x)


def _check_update_args(x, conv_state, weight, bias, activation, conv_state_indices, cache_seqlens):
    _checks.tensor("x", x, ndim=(2, 3))
    B, D = x.shape[:2]
    _checks.tensor("weight", weight, ndim=(2, 3), device=x.device)
    if weight.shape[0] != D or (weight.dim() == 3 and weight.shape[1] != 1):
        raise ValueError(f"weight: expected shape ({D}, W) to match x's {D} channels, got {tuple(weight.shape)}")
    W = weight.shape[-1]
    _checks.tensor("conv_state", conv_state, shape=(None, D, None), device=x.device)
    if conv_state.shape[2] < W - 1:
        raise ValueError(f"conv_state: expected a state length >= W-1 = {W - 1}, got shape {tuple(conv_state.shape)}")
    _checks.tensor("bias", bias, shape=(D,), device=x.device, optional=True)
    _checks.choice("activation", activation, _ACTIVATIONS)
    _checks.tensor("conv_state_indices", conv_state_indices, shape=(B,), dtypes=_checks.INT_DTYPES,
                   device=x.device, optional=True)
    if conv_state_indices is None and conv_state.shape[0] != B:
        raise ValueError(f"conv_state: expected batch {B} to match x (no conv_state_indices), "
                         f"got shape {tuple(conv_state.shape)}")
    _checks.tensor("cache_seqlens", cache_seqlens, shape=(B,), dtypes=_checks.INT_DTYPES, device=x.device,
                   optional=True)
    return W


# ---- eager fast path of the decode update (see state_step.py: plans kept per metadata signature) --

_update_plans = _kernels.PlanCache()


def _make_update_plan(x, conv_state, weight, bias, activation, conv_state_indices, cache_seqlens):
    """The plan of a call that passed the checks, or False for the general path (the reference,
    int64 indices, a weight not float32 contiguous along the width, an empty batch)."""
    if x.numel() == 0 or any(t is not None and t.dtype != torch.int32 for t in (conv_state_indices, cache_seqlens)):
        return False
    if weight.dtype != torch.float32 or weight.stride(-1) != 1:
        return False
    backend = dispatch.select_backend("dw_causal_conv_update", x.device, lambda b: _update_reason(b, x, conv_state))
    if backend == "reference":
        return False
    k = _kernels
    B, D, L = x.shape if x.dim() == 3 else (*x.shape, 1)
    sizes = (B, D, L, weight.shape[-1], conv_state.shape[0], conv_state.shape[2])
    x_mode = k.AS_IS if x.dim() == 3 else k.UNIT_LAST
    modes = (x_mode, k.AS_IS, k.AS_IS if weight.dim() == 2 else k.DROP_MID, k.AS_IS, k.AS_IS, k.AS_IS, x_mode)
    convert = bias is not None and bias.dtype != torch.float32
    b = k.float32_param(bias) if convert else bias
    tails = k.ref_tails(modes, (x, conv_state, weight, b, conv_state_indices, cache_seqlens, k.empty(x.shape, x)))
    head = (k.dtype_code(x), *sizes)
    return (backend, k.module(backend).dw_causal_conv_update, head, tails, convert, k.output_spec(x), B * D * L,
            k.prepare(backend, "dw_causal_conv_update", tails, lambda v: (*head, *v, activation is not None)),
            k.planned_threads(B * D * L))


def _run_update_plan(plan, x, conv_state, weight, bias, activation, conv_state_indices, cache_seqlens):
    backend, kernel, head, tails, convert, out_like, work, prepared, threads = plan
    bias = _kernels.float32_param(bias) if convert else bias
    y = _kernels.planned_output(x, out_like)
    if prepared is not None:  # (the plan's key holds the activation)
        prepared(x, conv_state, weight, bias, conv_state_indices, cache_seqlens, y, threads or torch.get_num_threads())
        return y
    kernel(*head, *_kernels.planned_refs(tails, (x, conv_state, weight, bias, conv_state_indices, cache_seqlens, y)),
           activation is not None, _kernels.cpu_threads(work) if backend == "cpu" else _kernels.exec_arg(backend, x))
    return y


def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                         activation: Optional[str] = None, cache_seqlens: Optional[Tensor] = None,
                         conv_state_indices: Optional[Tensor] = None) -> Tensor:
    """``causal_conv1d.causal_conv1d_update``: x (B, D) or (B, D, L) new tokens, conv_state
    (Bs, D, S >= W-1) updated in place (any memory layout, e.g. channels-last) -> y like x.

    Without ``cache_seqlens`` the state is a shift register: the conv sees its last W-1
    entries, and it keeps the last S entries of [state, x]. With ``cache_seqlens`` (B,) it is
    a circular buffer: token t of row b goes to position (cache_seqlens[b] + t) mod S and the
    conv sees the W-1 positions before it (later tokens win when L > S). Row b uses state
    ``conv_state_indices[b]``; a negative index is a padding row (y zero, no state touched).
    No host synchronization (CUDA-graph capturable).
    """
    compiling = torch.compiler.is_compiling()
    call = (x, conv_state, weight, bias, activation, conv_state_indices, cache_seqlens)
    sig, plan = (None, None) if compiling else _update_plans.find(
        (type(activation), activation), (x, conv_state, weight, bias, conv_state_indices, cache_seqlens))
    if plan:
        return _run_update_plan(plan, *call)
    W = _check_update_args(*call)
    if sig is not None:
        _update_plans[sig] = _make_update_plan(*call)
    # x3 (B, D, L)
    x3 = x.unsqueeze(-1) if x.dim() == 2 else x
    # eager: a bf16/fp16 weight and bias as their cached float32 copies (no cast kernels per decode step)
    f32 = _kernels.float32_contiguous if compiling else _kernels.float32_param
    w = f32(weight)
    w = w if w.dim() == 2 else w.reshape(w.shape[0], W)
    b = f32(bias)
    args = (x3, conv_state, w, b, activation is not None, conv_state_indices, cache_seqlens)
    y = _update_op(*args) if compiling else _update_impl(*args)
    return y[..., 0] if x.dim() == 2 else y


def dw_causal_conv_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                          activation: Optional[str] = None, *, conv_state_indices: Optional[Tensor] = None) -> Tensor:
    """One decode step (or a few) of :func:`dw_causal_conv`: see :func:`causal_conv1d_update`
    (shift-register state)."""
    return causal_conv1d_update(x, conv_state, weight, bias, activation, conv_state_indices=conv_state_indices)
