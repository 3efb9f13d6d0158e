"""Gated RMSNorm / LayerNorm of Mamba-2 (``mamba_ssm.ops.triton.layernorm_gated``), forward and
backward. Normalization runs over contiguous groups of ``group_size`` features (None = the
whole row); with z: norm_before_gate -> norm(x) * w (+ b) * silu(z), else norm(x * silu(z)) * w (+ b).
float32 compute, output in x's dtype."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ssm.ops import _checks, _kernels, _library
from ssm.ops.norm import _compute_dtype, _owned, _param
from ssm.ops.python import reference
from ssm.utils import dispatch


# ---- forward ---------------------------------------------------------------------------------

def _fwd_impl(x: Tensor, weight: Tensor, bias: Optional[Tensor], z: Optional[Tensor], eps: float,
              group_size: int, norm_before_gate: bool, is_rms: bool) -> Tensor:
    # x, z (M, N); weight, bias (N,) float32 -> y (M, N) x.dtype
    backend = dispatch.select_backend("gated_norm", x.device,
                                      lambda b: _kernels.kernel_reason(b, "gated_norm_fwd", x, z))
    if backend == "reference":
        return reference.gated_rms_norm(x, weight, bias, z, eps, group_size, norm_before_gate, is_rms)
    M, N = x.shape
    y = _kernels.empty((M, N), x)
    _kernels.module(backend).gated_norm_fwd(
        M, N, group_size, _kernels.dtype_code(x), _kernels.ref(x), _kernels.ref(weight), _kernels.ref(bias),
        None if z is None else _kernels.dtype_code(z), _kernels.ref(z), _kernels.ref(y), eps,
        norm_before_gate, is_rms, _kernels.exec_arg(backend, x))
    return y


@_library.custom_op("ssm::gated_norm_fwd", mutates_args=())
def _fwd_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], z: Optional[Tensor], eps: float, group_size: int,
            norm_before_gate: bool, is_rms: bool) -> Tensor:
    return _fwd_impl(x, weight, bias, z, eps, group_size, norm_before_gate, is_rms)


@_fwd_op.register_fake
def _(x, weight, bias, z, eps, group_size, norm_before_gate, is_rms):
    return _library.empty_like(x)


# ---- backward --------------------------------------------------------------------------------

def _bwd_impl(x, weight, bias, z, dy, eps, group_size, norm_before_gate, is_rms):
    backend = dispatch.select_backend("gated_norm_bwd", x.device,
                                      lambda b: _kernels.kernel_reason(b, "gated_norm_bwd", x, z, dy))
    if backend == "reference":
        def forward(x, weight, bias, z):
            return (reference.gated_rms_norm(x, weight, bias, z, eps, group_size, norm_before_gate, is_rms),)
        grads = _library.reference_vjp(forward, (x.to(_compute_dtype(x)), weight, bias,
                                                 None if z is None else z.to(_compute_dtype(z))), (dy,))
        dx, dw, db, dz = grads
        return (_owned(dx.to(x.dtype)), _owned(dw), _owned(_library.empty_if_none(db, x)),
                x.new_empty(0) if z is None else _owned(dz.to(z.dtype)))
    M, N = x.shape
    nthreads = _kernels.exec_arg(backend, x)
    dx = _kernels.empty((M, N), x)
    dz = None if z is None else _kernels.empty((M, N), z)
    dw_parts = _kernels.empty((_kernels.norm_parts(backend, M, nthreads), N), weight)
    db_parts = None if bias is None else _kernels.empty(dw_parts.shape, weight)
    _kernels.module(backend).gated_norm_bwd(
        M, N, group_size, _kernels.dtype_code(x), _kernels.ref(x), _kernels.ref(weight), _kernels.ref(bias),
        None if z is None else _kernels.dtype_code(z), _kernels.ref(z), _kernels.dtype_code(dy), _kernels.ref(dy),
        _kernels.ref(dx), _kernels.ref(dz), _kernels.ref(dw_parts), _kernels.ref(db_parts), eps,
        norm_before_gate, is_rms, nthreads)
    db = x.new_empty(0) if bias is None else db_parts.sum(0)
    return dx, dw_parts.sum(0), db, _library.empty_if_none(dz, x)


@_library.custom_op("ssm::gated_norm_bwd", mutates_args=())
def _bwd_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], z: Optional[Tensor], dy: Tensor, eps: float,
            group_size: int, norm_before_gate: bool, is_rms: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _bwd_impl(x, weight, bias, z, dy, eps, group_size, norm_before_gate, is_rms)


@_bwd_op.register_fake
def _(x, weight, bias, z, dy, eps, group_size, norm_before_gate, is_rms):
    empty = x.new_empty(0)
    return (_library.empty_like(x), _library.empty_like(weight), empty if bias is None else _library.empty_like(bias),
            empty if z is None else _library.empty_like(z))


def _setup_context(ctx, inputs, output):
    x, weight, bias, z, eps, group_size, norm_before_gate, is_rms = inputs
    ctx.save_for_backward(x, weight, bias, z)
    ctx.flags = (eps, group_size, norm_before_gate, is_rms)


def _backward(ctx, dy):
    x, weight, bias, z = ctx.saved_tensors
    dx, dw, db, dz = _bwd_op(x, weight, bias, z, dy, *ctx.flags)
    return dx, dw, None if bias is None else db, None if z is None else dz, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ---- public ----------------------------------------------------------------------------------

def _check_gated_args(x, weight, bias, z, group_size):
    _checks.tensor("x", x)
    if x.dim() < 1:
        raise ValueError(f"x: expected a tensor of at least 1 dimension (..., N), got shape {tuple(x.shape)}")
    N = x.shape[-1]
    _checks.tensor("weight", weight, shape=(N,), device=x.device)
    _checks.tensor("bias", bias, shape=(N,), device=x.device, optional=True)
    _checks.tensor("z", z, shape=tuple(x.shape), device=x.device, optional=True)
    if group_size is None:
        return N
    _checks.positive_int("group_size", group_size)
    if N % group_size:
        raise ValueError(f"group_size: expected a divisor of the feature size {N}, got {group_size}")
    return group_size


# ---- eager fast path without autograd (see state_step.py: plans kept per metadata signature) ----

_plans = _kernels.PlanCache()


def _flags(group_size, norm_before_gate, is_rms_norm):
    return (type(group_size), group_size, bool(norm_before_gate), bool(is_rms_norm))


def _rows(t: Optional[Tensor]) -> bool:
    """t (..., N) can be handed over as (M, N) rows of one stride, without a copy."""
    return t is None or t.dim() == 2 or (t.dim() > 2 and t.is_contiguous())


def _make_plan(x, weight, bias, z, group, eps, norm_before_gate, is_rms_norm):
    """The plan of a call that passed the checks, or False for the general path (the reference,
    float64, rows that need a copy, non-contiguous weights, an empty x)."""
    if x.numel() == 0 or x.dtype == torch.float64 or not (_rows(x) and _rows(z)):
        return False
    if any(t is not None and (t.dtype == torch.float64 or not t.is_contiguous()) for t in (weight, bias)):
        return False
    backend = dispatch.select_backend("gated_norm", x.device,
                                      lambda b: _kernels.kernel_reason(b, "gated_norm_fwd", x, z))
    if backend == "reference":
        return False
    k = _kernels
    convert = tuple(t is not None and t.dtype != torch.float32 for t in (weight, bias))
    w, b = _float32_params((weight, bias), convert)
    tails = k.ref_tails((k.ROWS, k.AS_IS, k.AS_IS, k.ROWS, k.ROWS), (x, w, b, z, k.empty(x.shape, x)))
    head = (x.numel() // x.shape[-1], x.shape[-1], group, k.dtype_code(x))
    z_code = None if z is None else k.dtype_code(z)
    # prepared with the plan's eps (the flags are in its key); a call with another eps takes the plain binding
    prepared = k.prepare(backend, "gated_norm_fwd", tails, lambda v: (
        *head, v[0], v[1], v[2], z_code, v[3], v[4], float(eps), bool(norm_before_gate), bool(is_rms_norm)))
    return (backend, k.module(backend).gated_norm_fwd, head, z_code, tails, convert if any(convert) else None,
            k.output_spec(x), x.numel(), prepared, float(eps), k.planned_threads(x.numel()))


def _float32_params(params, convert):
    """weight, bias as the plan takes them: the ones it converts as cached float32 copies."""
    return [_kernels.float32_param(t) if c else t for t, c in zip(params, convert)]


def _run_plan(plan, x, weight, bias, z, eps, norm_before_gate, is_rms_norm):
    backend, kernel, head, z_code, tails, convert, out_like, work, prepared, plan_eps, threads = plan
    if convert:
        weight, bias = _float32_params((weight, bias), convert)
    k = _kernels
    y = k.planned_output(x, out_like)
    if prepared is not None and eps == plan_eps:
        prepared(x, weight, bias, z, y, threads or torch.get_num_threads())
        return y
    xr, wr, br, zr, yr = k.planned_refs(tails, (x, weight, bias, z, y))
    kernel(*head, xr, wr, br, z_code, zr, yr, float(eps), bool(norm_before_gate), bool(is_rms_norm),
           k.cpu_threads(work) if backend == "cpu" else k.exec_arg(backend, x))
    return y


def gated_rms_norm(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, z: Optional[Tensor] = None,
                   eps: float = 1e-6, group_size: Optional[int] = None, norm_before_gate: bool = True,
                   is_rms_norm: bool = True) -> Tensor:
    """Gated RMSNorm (LayerNorm when ``is_rms_norm`` is False) of x (..., N) with gate z (..., N)."""
    eager = not torch.compiler.is_compiling() and not _library.needs_autograd(x, weight, bias, z)
    sig, plan = _plans.find(_flags(group_size, norm_before_gate, is_rms_norm),
                            (x, weight, bias, z)) if eager else (None, None)
    if plan:
        return _run_plan(plan, x, weight, bias, z, eps, norm_before_gate, is_rms_norm)
    group = _check_gated_args(x, weight, bias, z, group_size)
    if sig is not None:
        _plans[sig] = _make_plan(x, weight, bias, z, group, eps, norm_before_gate, is_rms_norm)
    N = x.shape[-1]
    # x, z (M, N)
    x2 = x.reshape(-1, N)
    z2 = None if z is None else z.reshape(-1, N)
    w, b = _param(weight, x), _param(bias, x)
    args = (x2, w, b, z2, float(eps), group, bool(norm_before_gate), bool(is_rms_norm))
    y = _fwd_op(*args) if _library.use_custom_op(x2, w, b, z2) else _fwd_impl(*args)
    return y.reshape(x.shape)


def layernorm_fn(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True, is_rms_norm=False):
    """``mamba_ssm.ops.triton.layernorm_gated.layernorm_fn``."""
    return gated_rms_norm(x, weight, bias, z, eps, group_size, norm_before_gate, is_rms_norm)


def rmsnorm_fn(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
    """``mamba_ssm.ops.triton.layernorm_gated.rmsnorm_fn``."""
    return gated_rms_norm(x, weight, bias, z, eps, group_size, norm_before_gate, True)


class RMSNormGated(nn.Module):
    """``mamba_ssm.ops.triton.layernorm_gated.RMSNorm``: parameter ``weight`` (ones), no bias."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: Optional[int] = None,
                 norm_before_gate: bool = True, device=None, dtype=None):
        super().__init__()
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate
        self.weight = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.ones_(self.weight)

    def forward(self, x, z=None):
        return rmsnorm_fn(x, self.weight, self.bias, z=z, eps=self.eps, group_size=self.group_size,
                          norm_before_gate=self.norm_before_gate)


class LayerNormGated(nn.Module):
    """``mamba_ssm.ops.triton.layernorm_gated.LayerNorm``: parameters ``weight`` (ones), ``bias`` (zeros)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: Optional[int] = None,
                 norm_before_gate: bool = True, device=None, dtype=None):
        super().__init__()
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate
        self.weight = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x, z=None):
        return layernorm_fn(x, self.weight, self.bias, z=z, eps=self.eps, group_size=self.group_size,
                            norm_before_gate=self.norm_before_gate)
