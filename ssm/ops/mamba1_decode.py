"""One decoded token through a Mamba-1 layer's inner part (between in_proj and out_proj):

    xc = act(causal_conv1d_update(x, conv_state, conv_weight, conv_bias))   conv_state updated in place
    dt, B, C = split(xc @ x_proj_weight^T, [R, N, N])
    y = selective_state_step(ssm_state, xc, dt @ dt_proj_weight^T, A, B, C, D, z, dt_bias, softplus=True)

On the CPU, for batches up to 4 without autograd, one C++ call (ssm/ops/cpu/mamba1_decode.cpp)
instead of ~24 small ops and their Python; elsewhere (CUDA, larger batches, torch.compile, autograd,
mixed dtypes) the composition of the public ops, with the same results. ``Mamba1.step`` uses it on
the CPU; SSM_CPU_LAYER_DECODE=0 (or ENABLED = False) turns the kernel off."""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from ssm.ops import _checks, _kernels
from ssm.ops.conv import causal_conv1d_update
from ssm.ops.norm_gemv import CPU_MAX_BATCH, gemv_linear
from ssm.ops.state_step import selective_state_step
from ssm.utils import dispatch

ENABLED = os.environ.get("SSM_CPU_LAYER_DECODE", "1") == "1"


def _check(x, z, conv_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, ssm_state,
           activation):
    _checks.tensor("x", x, ndim=2)
    (batch, dim), dev = x.shape, x.device
    _checks.tensor("z", z, shape=(batch, dim), device=dev, optional=True)
    _checks.tensor("conv_state", conv_state, shape=(batch, dim, None), device=dev)
    _checks.tensor("conv_weight", conv_weight, ndim=(2, 3), device=dev)
    if conv_weight.shape[0] != dim or (conv_weight.dim() == 3 and conv_weight.shape[1] != 1):
        raise ValueError(f"conv_weight: expected shape ({dim}, W) or ({dim}, 1, W), got {tuple(conv_weight.shape)}")
    if conv_state.shape[2] < max(conv_weight.shape[-1] - 1, 1):
        raise ValueError(f"conv_state: expected at least {max(conv_weight.shape[-1] - 1, 1)} entries along its "
                         f"last dimension (width - 1), got shape {tuple(conv_state.shape)}")
    _checks.tensor("ssm_state", ssm_state, shape=(batch, dim, None), device=dev)
    N = ssm_state.shape[2]
    _checks.tensor("A", A, shape=(dim, N), device=dev)
    _checks.tensor("dt_proj_weight", dt_proj_weight, shape=(dim, None), device=dev)
    R = dt_proj_weight.shape[1]
    _checks.tensor("x_proj_weight", x_proj_weight, shape=(R + 2 * N, dim), device=dev)
    for name, t in (("conv_bias", conv_bias), ("dt_bias", dt_bias), ("D", D)):
        _checks.tensor(name, t, shape=(dim,), device=dev, optional=True)
    _checks.choice("activation", activation, (None, "silu", "swish"))


def _static_ok(x, z, conv_state, x_proj_weight, dt_proj_weight, ssm_state) -> bool:
    """What a call's metadata decides (kept per signature): the CPU, batch <= CPU_MAX_BATCH, one kernel
    dtype for the activations, the conv state and the projections, a kernel dtype for the SSM state,
    projections contiguous along their inputs, the CPU kernel built and not another backend forced."""
    act = x.dtype
    if not x.is_cpu or not 0 < x.shape[0] <= CPU_MAX_BATCH or act not in _kernels.DTYPE_CODES:
        return False
    if (conv_state.dtype != act or x_proj_weight.dtype != act or dt_proj_weight.dtype != act
            or (z is not None and z.dtype != act) or ssm_state.dtype not in _kernels.DTYPE_CODES):
        return False
    if x_proj_weight.stride(1) != 1 or dt_proj_weight.stride(1) != 1:
        return False
    return (dispatch.forced_backend() in (None, "cpu") and dispatch.has_cpu_kernels()
            and hasattr(dispatch.cpu_module(), "mamba1_decode"))


def _dynamic_ok(tensors) -> bool:
    """What the metadata does not say: the switch, autograd, torch.compile."""
    if not ENABLED or torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


def _kernel_ok(x, z, conv_state, x_proj_weight, dt_proj_weight, ssm_state) -> bool:
    """The CPU kernel takes the call (see _static_ok and _dynamic_ok)."""
    return (_static_ok(x, z, conv_state, x_proj_weight, dt_proj_weight, ssm_state)
            and _dynamic_ok((x, z, conv_state, x_proj_weight, dt_proj_weight, ssm_state)))


_plans = _kernels.PlanCache()  # a call's metadata -> _static_ok of a call that passed the checks


def _composed(x, z, conv_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, ssm_state,
              activation):
    R, N = dt_proj_weight.shape[1], ssm_state.shape[2]
    xc = causal_conv1d_update(x, conv_state, conv_weight, conv_bias, activation)
    dt, B, C = torch.split(gemv_linear(xc, x_proj_weight), [R, N, N], dim=-1)
    return selective_state_step(ssm_state, xc, gemv_linear(dt, dt_proj_weight), A, B, C, D, z, dt_bias, True)


def _kernel(x, z, conv_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, ssm_state,
            activation):
    (batch, dim), N, R = x.shape, ssm_state.shape[2], dt_proj_weight.shape[1]
    f32 = _kernels.float32_param
    w, conv_bias, dt_bias, A, D = f32(conv_weight), f32(conv_bias), f32(dt_bias), f32(A), f32(D)
    out = _kernels.empty((batch, dim), x)
    r = _kernels.ref
    dispatch.cpu_module().mamba1_decode(
        _kernels.dtype_code(x), _kernels.dtype_code(ssm_state), batch, dim, N, R, w.shape[-1], conv_state.shape[2],
        activation is not None, r(x), r(z), r(conv_state), (w.data_ptr(), w.stride(0), w.stride(-1)), r(conv_bias),
        r(x_proj_weight), r(dt_proj_weight), r(dt_bias), r(D), r(A), r(ssm_state), r(out),
        _kernels.exec_arg("cpu", x, batch * dim * (R + 3 * N)))
    return out


def mamba1_decode(x: Tensor, z: Optional[Tensor], conv_state: Tensor, conv_weight: Tensor,
                  conv_bias: Optional[Tensor], x_proj_weight: Tensor, dt_proj_weight: Tensor,
                  dt_bias: Optional[Tensor], A: Tensor, D: Optional[Tensor], ssm_state: Tensor,
                  activation: Optional[str] = "silu") -> Tensor:
    """x, z (B, D) the token's in_proj halves; conv_state (B, D, S >= W - 1) and ssm_state (B, D, N)
    updated in place; conv_weight (D, W) or (D, 1, W); x_proj_weight (R + 2N, D); dt_proj_weight (D, R);
    conv_bias, dt_bias, D (D,); A (D, N) -> y (B, D) like x (softplus on dt always, as Mamba-1 has it)."""
    args = (x, z, conv_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, ssm_state,
            activation)
    if torch.compiler.is_compiling():
        _check(*args)
        return _composed(*args)
    # the checks and the metadata's verdict once per signature (they cost ~30 us, a token makes a call per layer)
    sig, plan = _kernels.find_plan(_plans, (activation,), args[:-1])
    if plan is None:
        _check(*args)
        plan = _static_ok(x, z, conv_state, x_proj_weight, dt_proj_weight, ssm_state)
        if sig is not None:
            _plans[sig] = plan
    if plan and _dynamic_ok((x, z, conv_state, x_proj_weight, dt_proj_weight, ssm_state)):
        return _kernel(*args)
    return _composed(*args)
