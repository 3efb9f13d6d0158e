"""Fused residual add + LayerNorm / RMSNorm over the last dimension, forward and backward;
``mamba_ssm``'s ``layer_norm_fn`` / ``rms_norm_fn`` / ``RMSNorm`` on top of it.

s = x (+ residual); y = norm(s) * weight (+ bias), norm(s) = (s - mean) * rstd (LayerNorm)
or s * rstd (RMSNorm), computed in float32 (float64 for float64 input), y in x's dtype."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ssm.ops import _checks, _kernels, _library
from ssm.ops.python import reference
from ssm.utils import dispatch


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _owned(t: Tensor) -> Tensor:
    """A custom op may not return views of one buffer (reference gradients can be)."""
    return t.clone() if t._base is not None else t


def _param(t: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
    """Norm weights travel as float32 contiguous (float64 with float64 input)."""
    return None if t is None else t.to(_compute_dtype(x)).contiguous()


def _kept_param(t: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
    """_param inside the custom ops (no autograd): float32 through a copy kept per parameter update."""
    return _kernels.small_param(t, _compute_dtype(x))


# ---- forward ---------------------------------------------------------------------------------

def _fwd_reason(backend, x, residual, residual_dtype):
    reason = _kernels.kernel_reason(backend, "layer_norm_fwd", x, residual)
    if reason is None and residual_dtype not in _kernels.DTYPE_CODES:
        reason = f"no kernel for residual dtype {residual_dtype}"
    return reason


def _fwd_impl(x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor], eps: float,
              is_rms: bool, residual_dtype: torch.dtype, store_residual: bool):
    # x, residual (M, N); weight, bias (N,) float32 -> y (M, N) x.dtype, residual_out (M, N) or empty
    backend = dispatch.select_backend("fused_layer_norm", x.device,
                                      lambda b: _fwd_reason(b, x, residual, residual_dtype))
    if backend == "reference":
        s = x.to(_compute_dtype(x)) if residual is None else x.to(_compute_dtype(x)) + residual
        y = reference.fused_layer_norm(s, weight, bias, None, is_rms, eps, prenorm=False).to(x.dtype)
        return y, s.to(residual_dtype) if store_residual else x.new_empty(0)
    M, N = x.shape
    y = _kernels.empty((M, N), x)
    res = _kernels.empty((M, N), x, residual_dtype) if store_residual else None
    _kernels.module(backend).layer_norm_fwd(
        M, N, _kernels.dtype_code(x), _kernels.ref(x), _kernels.ref(weight), _kernels.ref(bias),
        None if residual is None else _kernels.dtype_code(residual), _kernels.ref(residual),
        _kernels.DTYPE_CODES[residual_dtype], _kernels.ref(y), _kernels.ref(res), eps, is_rms,
        _kernels.exec_arg(backend, x))
    return y, _library.empty_if_none(res, x)


@_library.custom_op("ssm::fused_layer_norm_fwd", mutates_args=())
def _fwd_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor], eps: float,
            is_rms: bool, residual_dtype: torch.dtype, store_residual: bool) -> tuple[Tensor, Tensor]:
    # (the weights in their own dtypes: no cast nodes under autograd on every call)
    return _fwd_impl(x, _kept_param(weight, x), _kept_param(bias, x), residual, eps, is_rms, residual_dtype,
                     store_residual)


@_fwd_op.register_fake
def _(x, weight, bias, residual, eps, is_rms, residual_dtype, store_residual):
    res = _library.empty_like(x, dtype=residual_dtype) if store_residual else x.new_empty(0)
    return _library.empty_like(x), res


# ---- backward --------------------------------------------------------------------------------

def _bwd_impl(s, weight, bias, dy, dres, eps, is_rms, x_dtype, residual_dtype, has_residual):
    # s (M, N): the normalized input; dres (M, N) or empty: gradient of residual_out
    backend = dispatch.select_backend("fused_layer_norm_bwd", s.device,
                                      lambda b: _kernels.kernel_reason(b, "layer_norm_bwd", s, dy, dres))
    if backend == "reference":
        def forward(s, weight, bias):
            return (reference.fused_layer_norm(s, weight, bias, None, is_rms, eps, prenorm=False),)
        ds, dw, db = _library.reference_vjp(forward, (s.to(_compute_dtype(s)), weight, bias), (dy,))
        if dres.numel():
            ds = ds + dres
        dresidual = ds.to(residual_dtype, copy=True) if has_residual else s.new_empty(0)
        return _owned(ds.to(x_dtype)), _owned(dw), _owned(_library.empty_if_none(db, s)), _owned(dresidual)
    M, N = s.shape
    dx = _kernels.empty((M, N), s, x_dtype)
    dresidual = _kernels.empty((M, N), s, residual_dtype) if has_residual else None
    nthreads = _kernels.exec_arg(backend, s)
    dw_parts = _kernels.empty((_kernels.norm_parts(backend, M, nthreads), N), weight)
    db_parts = _kernels.empty(dw_parts.shape, weight) if bias is not None else None
    _kernels.module(backend).layer_norm_bwd(
        M, N, _kernels.dtype_code(s), _kernels.ref(s), _kernels.ref(weight), _kernels.ref(bias),
        _kernels.dtype_code(dy), _kernels.ref(dy), _kernels.dtype_code(dres) if dres.numel() else None,
        _kernels.ref(dres) if dres.numel() else None, _kernels.DTYPE_CODES[x_dtype], _kernels.ref(dx),
        _kernels.DTYPE_CODES[residual_dtype], _kernels.ref(dresidual), _kernels.ref(dw_parts),
        _kernels.ref(db_parts), eps, is_rms, nthreads)
    db = db_parts.sum(0) if bias is not None else s.new_empty(0)
    return dx, dw_parts.sum(0), db, _library.empty_if_none(dresidual, s)


@_library.custom_op("ssm::fused_layer_norm_bwd", mutates_args=())
def _bwd_op(s: Tensor, weight: Tensor, bias: Optional[Tensor], dy: Tensor, dres: Tensor, eps: float,
            is_rms: bool, x_dtype: torch.dtype, residual_dtype: torch.dtype,
            has_residual: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # weight, bias in their own dtypes (as _fwd_op takes them), and so their gradients
    par = torch.float64 if x_dtype == torch.float64 else torch.float32  # (the forward's: x's compute dtype)
    dx, dw, db, dresidual = _bwd_impl(s, _kernels.small_param(weight, par), _kernels.small_param(bias, par), dy, dres,
                                      eps, is_rms, x_dtype, residual_dtype, has_residual)
    return dx, dw.to(weight.dtype), db if bias is None else db.to(bias.dtype), dresidual


@_bwd_op.register_fake
def _(s, weight, bias, dy, dres, eps, is_rms, x_dtype, residual_dtype, has_residual):
    empty = s.new_empty(0)
    return (_library.empty_like(s, dtype=x_dtype), _library.empty_like(weight),
            empty if bias is None else _library.empty_like(bias),
            _library.empty_like(s, dtype=residual_dtype) if has_residual else empty)


def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, eps, is_rms, residual_dtype, store_residual = inputs
    ctx.save_for_backward(output[1] if store_residual else x, weight, bias)
    ctx.flags = (eps, is_rms, x.dtype, residual_dtype, residual is not None, store_residual)


def _backward(ctx, dy, dres):
    s, weight, bias = ctx.saved_tensors
    eps, is_rms, x_dtype, residual_dtype, has_residual, store_residual = ctx.flags
    dres = dres if store_residual and dres is not None else dy.new_empty(0)
    dx, dw, db, dresidual = _bwd_op(s, weight, bias, dy, dres, eps, is_rms, x_dtype, residual_dtype, has_residual)
    return (dx, dw, None if bias is None else db, dresidual if has_residual else None, None, None, None, None)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ---- public ----------------------------------------------------------------------------------

def _check_norm_args(x, weight, bias, residual):
    _checks.tensor("x", x)
    if x.dim() < 1:
        raise ValueError(f"x: expected a tensor of at least 1 dimension (..., N), got shape {tuple(x.shape)}")
    N = x.shape[-1]
    _checks.tensor("weight", weight, shape=(N,), device=x.device)
    _checks.tensor("bias", bias, shape=(N,), device=x.device, optional=True)
    _checks.tensor("residual", residual, shape=tuple(x.shape), device=x.device, optional=True)


def _residual_dtype(x: Tensor, residual: Optional[Tensor], residual_in_fp32: bool) -> torch.dtype:
    if residual is not None:
        return residual.dtype
    return torch.float32 if residual_in_fp32 else x.dtype


# ---- eager fast path without autograd (see state_step.py: plans kept per metadata signature) ----

_plans = _kernels.PlanCache()


def _flags(is_rms, prenorm, residual_in_fp32):
    return bool(is_rms), bool(prenorm), bool(residual_in_fp32)


def _make_plan(x, weight, bias, residual, residual_in_fp32, is_rms, eps):
    """The plan of a call that passed the checks, or False for the general path (the reference,
    float64, 1-d or non-contiguous x / residual, non-contiguous weights, an empty x)."""
    if x.dim() < 2 or x.numel() == 0 or not x.is_contiguous() or (residual is not None and not residual.is_contiguous()):
        return False
    if any(t is not None and not t.is_contiguous() for t in (weight, bias)):
        return False
    residual_dtype = _residual_dtype(x, residual, residual_in_fp32)
    if x.dtype == torch.float64 or weight.dtype == torch.float64:
        return False
    backend = dispatch.select_backend("fused_layer_norm", x.device,
                                      lambda b: _fwd_reason(b, x, residual, residual_dtype))
    if backend == "reference":
        return False
    k = _kernels
    store = residual is not None or residual_dtype != x.dtype
    convert = weight.dtype != torch.float32 or (bias is not None and bias.dtype != torch.float32)
    w, b = (_float32_params(weight, bias) if convert else (weight, bias))
    y, res = k.empty(x.shape, x), k.empty(x.shape, x, residual_dtype) if store else None
    tails = k.ref_tails((k.ROWS, k.AS_IS, k.AS_IS, k.ROWS, k.ROWS, k.ROWS), (x, w, b, residual, y, res))
    M, N = x.numel() // x.shape[-1], x.shape[-1]
    codes = (k.dtype_code(x), None if residual is None else k.dtype_code(residual), k.DTYPE_CODES[residual_dtype])
    # prepared with the plan's eps (is_rms is in its key); a call with another eps takes the plain binding
    prepared = k.prepare(backend, "layer_norm_fwd", tails, lambda v: (
        M, N, codes[0], v[0], v[1], v[2], codes[1], v[3], codes[2], v[4], v[5], float(eps), bool(is_rms)))
    return (backend, k.module(backend).layer_norm_fwd, (M, N, codes[0]), tails, codes[1:], convert,
            (tuple(x.shape), residual_dtype, x.device) if store else None, x.numel(), prepared, float(eps),
            k.planned_threads(x.numel()))


def _float32_params(weight, bias):
    return tuple(t if t is None or t.dtype == torch.float32 else _kernels.float32_param(t) for t in (weight, bias))


def _run_plan(plan, x, weight, bias, residual, is_rms, eps, prenorm):
    backend, kernel, head, tails, codes, convert, res_spec, work, prepared, plan_eps, threads = plan
    if convert:
        weight, bias = _float32_params(weight, bias)
    k = _kernels
    y = k.planned_output(x, None)  # (x is contiguous)
    res = None if res_spec is None else k.planned_output(x, None) if res_spec[1] == x.dtype else k.new_empty(*res_spec)
    if prepared is not None and eps == plan_eps:
        prepared(x, weight, bias, residual, y, res, threads or torch.get_num_threads())
    else:
        xr, wr, br, rr, yr, resr = k.planned_refs(tails, (x, weight, bias, residual, y, res))
        kernel(*head, xr, wr, br, codes[0], rr, codes[1], yr, resr, float(eps), bool(is_rms),
               k.cpu_threads(work) if backend == "cpu" else k.exec_arg(backend, x))
    if not prenorm:
        return y
    return y, x if res is None else res


# ---- eager fast path with autograd: the plan's forward launch and the op's backward in one autograd.Function
# (the general path costs the checks, the custom op's layers, the backend and dtype lookups and four view nodes
# on every call: the host time of every layer's add + norm in a training forward) ------------------------------

_GRAD = object()  # tags a plan made for calls with autograd


def _make_grad_plan(x, weight, bias, residual, residual_in_fp32, is_rms, eps):
    """(_GRAD, plan) of a call with autograd that the no-autograd plan can launch, or False (the general path;
    also with the custom ops' eager path switched off)."""
    plan = _library.EAGER_DIRECT and _make_plan(x, weight, bias, residual, residual_in_fp32, is_rms, eps)
    return (_GRAD, plan) if plan else False


def _run_grad_plan(plan, x, weight, bias, residual, is_rms, eps, prenorm):
    out = _PlannedNorm.apply(x, weight, bias, residual, plan, bool(is_rms), float(eps))
    y, res = out if plan[6] is not None else (out, x)  # (without a stored residual, residual_out is x itself)
    return (y, res) if prenorm else y


class _PlannedNorm(torch.autograd.Function):
    """fused_layer_norm with autograd through a plan: the forward launched as _run_plan launches it, the backward
    the custom op's (the same kernels and gradients as the general path)."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, plan, is_rms, eps):
        y, res = _run_plan(plan, x, weight, bias, residual, is_rms, eps, True)
        store = plan[6] is not None
        ctx.save_for_backward(res if store else x, weight, bias)
        ctx.flags = (eps, is_rms, x.dtype, plan[6][1] if store else x.dtype, residual is not None)
        ctx.set_materialize_grads(False)
        return (y, res) if store else y

    @staticmethod
    def backward(ctx, dy, dres=None):
        s, weight, bias = ctx.saved_tensors
        eps, is_rms, x_dtype, residual_dtype, has_residual = ctx.flags
        N = s.shape[-1]
        # dy, dres (M, N); an unused y gets zeros (as the general path's materialized gradient), an unused
        # residual_out none
        dy = torch.zeros(s.shape, dtype=x_dtype, device=s.device) if dy is None else dy
        dres = s.new_empty(0) if dres is None else dres.reshape(-1, N)
        dx, dw, db, dresidual = _bwd_op(s.reshape(-1, N), weight, bias, dy.reshape(-1, N), dres, eps, is_rms,
                                        x_dtype, residual_dtype, has_residual)
        return (dx.view(s.shape), dw, None if bias is None else db,
                dresidual.view(s.shape) if has_residual else None, None, None, None)


def fused_layer_norm(x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor] = None,
                     is_rms: bool = False, eps: float = 1e-5, prenorm: bool = True, residual_in_fp32: bool = True):
    """Residual add + LayerNorm (RMSNorm with ``is_rms``) over the last dim of x (..., N).

    Returns y (x's dtype), or (y, residual_out) with ``prenorm``: residual_out = x + residual,
    in residual's dtype when given, else float32 with ``residual_in_fp32``, else x's dtype
    (then it is x itself).
    """
    # A plan's key holds the grad mode and its guard each tensor's requires_grad: a call that finds a plan made
    # without autograd needs none either; one made with autograd (_GRAD) runs through _PlannedNorm.
    sig, plan = (None, None) if torch.compiler.is_compiling() else _plans.find(
        _flags(is_rms, prenorm, residual_in_fp32) + (torch.is_grad_enabled(),), (x, weight, bias, residual))
    if plan:
        if plan[0] is not _GRAD:
            return _run_plan(plan, x, weight, bias, residual, is_rms, eps, prenorm)
        if _library.EAGER_DIRECT:  # (switched off: the custom op's path, as every op's)
            return _run_grad_plan(plan[1], x, weight, bias, residual, is_rms, eps, prenorm)
    _check_norm_args(x, weight, bias, residual)
    if sig is not None and plan is None:
        if not _library.needs_autograd(x, weight, bias, residual):
            _plans[sig] = _make_plan(x, weight, bias, residual, residual_in_fp32, is_rms, eps)
        else:
            _plans[sig] = _make_grad_plan(x, weight, bias, residual, residual_in_fp32, is_rms, eps)
    N = x.shape[-1]
    residual_dtype = _residual_dtype(x, residual, residual_in_fp32)
    store = residual is not None or residual_dtype != x.dtype
    # x, residual (M, N): a view when the rows can be strided, else a copy
    x2 = x.reshape(-1, N)
    r2 = None if residual is None else residual.reshape(-1, N)
    if _library.use_custom_op(x2, weight, bias, r2):
        y, res = _fwd_op(x2, weight, bias, r2, float(eps), bool(is_rms), residual_dtype, store)
    else:
        y, res = _fwd_impl(x2, _param(weight, x), _param(bias, x), r2, float(eps), bool(is_rms), residual_dtype, store)
    y = y.reshape(x.shape)
    if not prenorm:
        return y
    return y, res.reshape(x.shape) if store else x


# ---- mamba_ssm names: layer_norm_fn, rms_norm_fn, their references, RMSNorm -------------------

def _normalize(s: Tensor, weight: Tensor, bias: Optional[Tensor], eps: float, is_rms: bool) -> Tensor:
    """norm(s) * weight (+ bias) over the last dim, in s's dtype (plain torch)."""
    if not is_rms:
        s = s - s.mean(-1, keepdim=True)
    y = s * torch.rsqrt(s.square().mean(-1, keepdim=True) + eps) * weight.to(s.dtype)
    return y if bias is None else y + bias.to(s.dtype)


def _dropout(t: Tensor, p: float, mask: Optional[Tensor]):
    """Inverted dropout with a given or fresh keep-mask; returns (t, mask)."""
    if p <= 0.0:
        return t, None
    if mask is None:
        mask = torch.rand(t.shape, device=t.device) >= p
    return t.masked_fill(~mask, 0.0) / (1.0 - p), mask


def _presum(x, residual, x1, rowscale, dropout_p, mask=None, mask1=None):
    """s = dropout(x * rowscale) [+ dropout(x1)] [+ residual], in x's dtype; returns (s, mask, mask1)."""
    if rowscale is not None:
        x = x * rowscale[..., None].to(x.dtype)
    s, mask = _dropout(x, dropout_p, mask)
    if x1 is not None:
        x1, mask1 = _dropout(x1.to(x.dtype), dropout_p, mask1)
        s = s + x1
    if residual is not None:
        s = s + residual.to(x.dtype)
    return s, mask, mask1


def _check_extras(x, x1, weight1, bias1, rowscale, dropout_p):
    _checks.tensor("x1", x1, shape=tuple(x.shape), device=x.device, optional=True)
    _checks.tensor("weight1", weight1, shape=(x.shape[-1],), device=x.device, optional=True)
    _checks.tensor("bias1", bias1, shape=(x.shape[-1],), device=x.device, optional=True)
    _checks.tensor("rowscale", rowscale, shape=tuple(x.shape[:-1]), device=x.device, optional=True)
    if bias1 is not None and weight1 is None:
        raise ValueError("bias1: given without weight1")
    if x1 is not None and rowscale is not None:
        raise ValueError("rowscale: not supported together with x1 (as in mamba_ssm)")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p: expected a probability in [0, 1), got {dropout_p}")


def _norm_torch(x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p, rowscale, residual_in_fp32,
                is_rms):
    """The extended op (x1, weight1, rowscale, dropout) in plain torch, float32 compute:
    returns (y, y1 or None, residual_out, mask, mask1)."""
    s, mask, mask1 = _presum(x.to(_compute_dtype(x)), residual, x1, rowscale, dropout_p)
    y = _normalize(s, weight, bias, eps, is_rms).to(x.dtype)
    y1 = None if weight1 is None else _normalize(s, weight1, bias1, eps, is_rms).to(x.dtype)
    return y, y1, s.to(_residual_dtype(x, residual, residual_in_fp32)), mask, mask1


def layer_norm_fn(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=1e-6, dropout_p=0.0,
                  rowscale=None, prenorm=False, residual_in_fp32=False, is_rms_norm=False,
                  return_dropout_mask=False):
    """``mamba_ssm.ops.triton.layer_norm.layer_norm_fn``: returns y | (y, residual) | (y, y1) |
    (y, y1, residual), followed by (dropout_mask, dropout_mask1) with ``return_dropout_mask``."""
    plain = x1 is None and weight1 is None and bias1 is None and rowscale is None and dropout_p == 0.0
    if plain and not return_dropout_mask:  # (fused_layer_norm returns y or (y, residual) as this does)
        return fused_layer_norm(x, weight, bias, residual, is_rms_norm, eps, prenorm, residual_in_fp32)
    if not plain:  # (fused_layer_norm checks the plain call's arguments)
        _check_norm_args(x, weight, bias, residual)
        _check_extras(x, x1, weight1, bias1, rowscale, dropout_p)
    if plain:
        out = fused_layer_norm(x, weight, bias, residual, is_rms_norm, eps, prenorm, residual_in_fp32)
        y, res = out if prenorm else (out, None)
        y1 = mask = mask1 = None
    else:
        y, y1, res, mask, mask1 = _norm_torch(x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p,
                                              rowscale, residual_in_fp32, is_rms_norm)
    outs = (y,) + ((y1,) if weight1 is not None else ()) + ((res,) if prenorm else ())
    if return_dropout_mask:
        return outs + (mask, mask1)
    return outs if len(outs) > 1 else y


def rms_norm_fn(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=1e-6, dropout_p=0.0,
                rowscale=None, prenorm=False, residual_in_fp32=False, return_dropout_mask=False):
    """``mamba_ssm.ops.triton.layer_norm.rms_norm_fn``: :func:`layer_norm_fn` with RMSNorm."""
    return layer_norm_fn(x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p, rowscale, prenorm,
                         residual_in_fp32, True, return_dropout_mask)


def _norm_ref(x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p, rowscale, prenorm, dropout_mask,
              dropout_mask1, upcast, is_rms):
    dtype = x.dtype
    if upcast:
        x, weight, bias, residual, x1, weight1, bias1 = (
            None if t is None else t.float() for t in (x, weight, bias, residual, x1, weight1, bias1))
    s, _, _ = _presum(x, residual, x1, rowscale, dropout_p, dropout_mask, dropout_mask1)
    outs = (_normalize(s.to(weight.dtype), weight, bias, eps, is_rms).to(dtype),)
    if weight1 is not None:
        outs += (_normalize(s.to(weight1.dtype), weight1, bias1, eps, is_rms).to(dtype),)
    outs += (s,) if prenorm else ()
    return outs if len(outs) > 1 else outs[0]


def layer_norm_ref(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=1e-6, dropout_p=0.0,
                   rowscale=None, prenorm=False, dropout_mask=None, dropout_mask1=None, upcast=False):
    """``mamba_ssm``'s torch LayerNorm reference: computes in x's dtype (float32 with ``upcast``)."""
    return _norm_ref(x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p, rowscale, prenorm,
                     dropout_mask, dropout_mask1, upcast, False)


def rms_norm_ref(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=1e-6, dropout_p=0.0,
                 rowscale=None, prenorm=False, dropout_mask=None, dropout_mask1=None, upcast=False):
    """``mamba_ssm``'s torch RMSNorm reference: computes in x's dtype (float32 with ``upcast``)."""
    return _norm_ref(x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p, rowscale, prenorm,
                     dropout_mask, dropout_mask1, upcast, True)


class RMSNorm(nn.Module):
    """``mamba_ssm.ops.triton.layer_norm.RMSNorm``: parameter ``weight`` (ones), no bias."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, dropout_p: float = 0.0, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.drop = nn.Dropout(dropout_p) if dropout_p > 0.0 else None
        self.weight = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.ones_(self.weight)

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        dropout_p = self.drop.p if self.drop is not None and self.training else 0.0
        return rms_norm_fn(x, self.weight, self.bias, residual=residual, eps=self.eps, dropout_p=dropout_p,
                           prenorm=prenorm, residual_in_fp32=residual_in_fp32)
