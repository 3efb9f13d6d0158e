"""Small-batch linear layers for decoding, optionally with the gated RMSNorm of Mamba-2 on their
input: ``gated_norm_linear`` = F.linear(rmsnorm_fn(x, norm_weight, z=z, ...), weight, bias) and
``small_linear(linear, x)`` = linear(x), and ``norm_linear``: a prenorm block's residual add + norm
feeding the next layer's input projection (optionally with Mamba-1's conv update on its outputs).

On CUDA, for batches up to 4, one kernel (ssm/ops/cuda/norm_gemv.cu: every block normalizing the
input rows itself, the weights streamed by a grid that fills the GPU once and launched with
programmatic dependent launch) instead of the norm kernel and a cuBLAS GEMV; elsewhere, when
compiling, under autograd (small_linear), or for arguments the kernel does not take, the
composition, with the same results. ``Mamba2.step`` uses ``gated_norm_linear`` for its out_proj
(SSM_FUSED_DECODE=0 turns it off), the blocks' add + norm with the mixers' in_proj go through
``norm_linear``; ``small_linear`` replaces the other decode projections and the model's lm_head
(SSM_DECODE_GEMV=0: cuBLAS).

On the CPU, every one of them (and ``gemv_linear``, F.linear's drop-in) runs its linear layer through
the C++ small-batch kernel (ssm/ops/cpu/gemv.cpp) for batches up to 4 without autograd: one pass
over the weights, at the machine's read bandwidth (torch's float32 GEMV reached ~80% of it, its
bfloat16 one far less); SSM_DECODE_GEMV=0 turns it off too."""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssm.ops import _checks, _kernels
from ssm.ops import conv_state_step as _css
from ssm.ops.conv import causal_conv1d_update
from ssm.ops.gated_norm import rmsnorm_fn
from ssm.ops.norm import fused_layer_norm
from ssm.utils import dispatch

# H200 round 2: the plain small-batch kernel beat cuBLAS for Mamba-1's out_proj (b1 0.671 vs 0.724 ms
# per token)
PLAIN = os.environ.get("SSM_DECODE_GEMV", "1") == "1"
# one switch per fused form (each can be turned off alone; SSM_FUSED_DECODE=0 turns off all)
GATED, PRENORM = True, True
# Mamba-1's conv update in in_proj's kernel (norm_linear's conv; SSM_DECODE_CONV_EPILOGUE=0: its own kernel)
CONV_EPILOGUE = os.environ.get("SSM_DECODE_CONV_EPILOGUE", "1") != "0"
_MAX_BATCH, _MAX_SEGMENTS, _SMEM_FLOATS = 4, 64, 12 * 1024
# past 4 rows torch's GEMM wins: the kernel reuses each weight vector for at most 4 rows of x
CPU_MAX_BATCH = 4


def _cpu_gemv_ok(x, weight, bias) -> bool:
    """The CPU small-batch kernel takes F.linear(x, weight, bias): x (B <= CPU_MAX_BATCH, K) and
    weight (M, K) of one kernel dtype, unit stride along K, no autograd, no other backend forced."""
    if not PLAIN or not x.is_cpu or x.dim() != 2 or not 0 < x.shape[0] <= CPU_MAX_BATCH:
        return False
    if (x.dtype not in _kernels.DTYPE_CODES or weight.dtype != x.dtype or weight.dim() != 2
            or weight.shape[1] != x.shape[1] or (weight.stride(1) != 1 and x.shape[1] > 1)):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return False
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0] or bias.device != x.device):
        return False
    # SSM_BACKEND read raw first (parsing it costs 1 us, a decode step makes ~100 of these calls)
    forced = _kernels.forced_backend_value()
    return ((forced is None or dispatch.forced_backend() in (None, "cpu")) and dispatch.has_cpu_kernels()
            and not torch.compiler.is_compiling())


def _cpu_gemv(x, weight, bias):
    batch, K = x.shape
    out = _kernels.empty((batch, weight.shape[0]), x)
    r = _kernels.ref
    dispatch.cpu_module().gemv(_kernels.dtype_code(x), batch, K, weight.shape[0], r(x), r(weight),
                               r(_kernels.float32_param(bias)), r(out), _kernels.exec_arg("cpu", weight))
    return out


def gemv_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """F.linear(x, weight, bias); x (B, K) with B <= CPU_MAX_BATCH on the CPU through the small-batch
    kernel (no autograd), everything else through F.linear."""
    if _cpu_gemv_ok(x, weight, bias):
        return _cpu_gemv(x, weight, bias)
    return F.linear(x, weight, bias)


def _fusable(x, z, weight, groups) -> bool:
    if not _css.FUSED or x.device.type != "cuda" or dispatch.forced_backend() not in (None, "cuda"):
        return False
    if not dispatch.has_cuda_kernels() or not hasattr(dispatch.cuda_module(), "norm_gemv"):
        return False
    act, (batch, K) = x.dtype, x.shape
    per = 16 // weight.element_size()
    return (act in _kernels.KERNEL_DTYPES and weight.dtype == act and (z is None or z.dtype == act)
            and 1 <= batch <= _MAX_BATCH and batch * K <= _SMEM_FLOATS and batch * groups <= _MAX_SEGMENTS
            and K % per == 0 and weight.stride(1) == 1 and weight.stride(0) % per == 0
            and weight.data_ptr() % 16 == 0)


def _fused(mode, x, z, norm_weight, weight, bias, group_size, eps, residual=None, residual_out=None,
           norm_bias=None, conv=None, conv_rows=0):
    """The kernel call; ``conv`` = (conv_state, conv_weight (C, W) or (C, 1, W), conv_bias, conv_out, silu):
    with conv_rows = C > 0 (modes 3, 4) the conv update of the first C outputs."""
    batch, K = x.shape
    f32 = _kernels.float32_param
    norm_weight, bias, norm_bias = (t if t is None or t.dtype == torch.float32 else f32(t)
                                    for t in (norm_weight, bias, norm_bias))
    out = _kernels.empty((batch, weight.shape[0]), x)
    r = _kernels.ref
    conv_args = (0, 0, False, None, None, None, None)
    if conv is not None:
        state, w, b, conv_out, silu = conv
        w = w if w.dtype == torch.float32 else f32(w)
        b = b if b is None or b.dtype == torch.float32 else f32(b)
        conv_args = (w.shape[-1], state.shape[-1], silu, r(state), (w.data_ptr(), w.stride(0), w.stride(-1)), r(b),
                     r(conv_out))
    dispatch.cuda_module().norm_gemv(
        _kernels.dtype_code(x), batch, K, weight.shape[0], group_size, mode, float(eps), r(x), r(z), r(norm_weight),
        r(weight), r(bias), r(out), r(residual), r(residual_out), r(norm_bias), *conv_args, conv_rows,
        _kernels.exec_arg("cuda", x))
    return out


def _check_linear(x, weight, bias):
    _checks.tensor("x", x, ndim=2)
    _checks.tensor("weight", weight, shape=(None, x.shape[1]), device=x.device)
    _checks.tensor("bias", bias, shape=(weight.shape[0],), device=x.device, optional=True)


def gated_norm_linear(x: Tensor, z: Tensor, norm_weight: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                      *, group_size: Optional[int] = None, eps: float = 1e-5,
                      norm_before_gate: bool = False) -> Tensor:
    """x, z (B, K); norm_weight (K,); weight (M, K); bias (M,) -> (B, M) like x:
    F.linear(rmsnorm_fn(x, norm_weight, None, z, eps, group_size, norm_before_gate), weight, bias)."""
    _check_linear(x, weight, bias)
    K = x.shape[1]
    _checks.tensor("z", z, shape=tuple(x.shape), device=x.device)
    _checks.tensor("norm_weight", norm_weight, shape=(K,), device=x.device)
    gs = K if group_size is None else group_size
    if not isinstance(gs, int) or gs < 1 or K % gs:
        raise ValueError(f"group_size: expected a positive divisor of {K}, got {group_size!r}")
    if not GATED or torch.compiler.is_compiling() or not _fusable(x, z, weight, K // gs):
        y = rmsnorm_fn(x, norm_weight, None, z=z, eps=eps, group_size=group_size, norm_before_gate=norm_before_gate)
        return gemv_linear(y, weight, bias)
    return _fused(2 if norm_before_gate else 1, x, z, norm_weight, weight, bias, gs, eps)


def cpu_linear(linear: nn.Module, x: Tensor) -> Tensor:
    """linear(x); a plain nn.Linear's call through gemv_linear (the CPU small-batch kernel when it takes it)."""
    if type(linear) is nn.Linear:
        return gemv_linear(x, linear.weight, linear.bias)
    return linear(x)


def _needs_grad(x: Tensor, linear: nn.Module) -> bool:
    """Autograd would track linear(x) (the kernel has no backward: a tiny training batch takes linear)."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in linear.parameters()))


def small_linear(linear: nn.Module, x: Tensor) -> Tensor:
    """linear(x) for x (B, K); through the small-batch kernel when PLAIN is set and ``linear`` is a
    plain nn.Linear (a wrapped or adapted layer keeps its own forward)."""
    if x.is_cpu:
        return cpu_linear(linear, x)
    if (not PLAIN or type(linear) is not nn.Linear or torch.compiler.is_compiling() or x.dim() != 2
            or not _fusable(x, None, linear.weight, 0) or _needs_grad(x, linear)):
        return linear(x)
    _check_linear(x, linear.weight, linear.bias)
    return _fused(0, x, None, None, linear.weight, linear.bias, 1, 0.0)


def small_matmul(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """F.linear(x, weight, bias) for x (B, K): through the small-batch kernel on CUDA when it takes the
    call (PLAIN, no autograd, not compiling), else gemv_linear."""
    if (x.is_cpu or not PLAIN or torch.compiler.is_compiling() or x.dim() != 2 or not _fusable(x, None, weight, 0)
            or (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)))):
        return gemv_linear(x, weight, bias)
    _check_linear(x, weight, bias)
    return _fused(0, x, None, None, weight, bias, 1, 0.0)


def _conv_epilogue_ok(x: Tensor, M: int, conv) -> bool:
    """The kernel's conv epilogue takes conv = (conv_state, conv_weight, conv_bias, activation) after the first
    C of M outputs of x (B, K): state (B, C, S <= 4) in x's dtype, W <= 4, S >= W - 1, silu or no activation."""
    state, w, _, activation = conv
    W = w.shape[-1]
    return (CONV_EPILOGUE and state.dim() == 3 and state.shape[0] == x.shape[0] and state.shape[1] <= M
            and state.dtype == x.dtype and 1 <= W <= 4 and W - 1 <= state.shape[-1] <= 4
            and w.shape[0] == state.shape[1] and activation in (None, "silu", "swish"))


def norm_linear(x: Tensor, residual: Optional[Tensor], norm_weight: Tensor, norm_bias: Optional[Tensor],
                linear: nn.Module, *, is_rms: bool = True, eps: float = 1e-5, conv=None):
    """A prenorm block's residual add + norm feeding a linear layer, for one decoded token:
    x (B, K), residual (B, K) float32 or None -> (linear(norm(x + residual)), residual_out (B, K) float32).
    Same as fused_layer_norm(x, norm_weight, norm_bias, residual, is_rms, eps, prenorm=True,
    residual_in_fp32=True) then linear(y); one kernel on CUDA for a plain nn.Linear.
    conv = (conv_state (B, C, S), conv_weight (C, W) or (C, 1, W), conv_bias, activation): the first C outputs
    also go through causal_conv1d_update on conv_state (updated in place) -> (out, residual_out, x_conv (B, C));
    in the same kernel on CUDA when it takes them (Mamba-1's in_proj and conv update)."""
    if conv is not None:
        return _norm_linear_conv(x, residual, norm_weight, norm_bias, linear, is_rms, eps, conv)
    _checks.tensor("x", x, ndim=2)
    _checks.tensor("residual", residual, shape=tuple(x.shape), device=x.device, optional=True)
    fusable = (PRENORM and type(linear) is nn.Linear and (residual is None or residual.dtype == torch.float32)
               and not torch.compiler.is_compiling() and _fusable(x, None, linear.weight, 1))
    if not fusable:
        y, res = fused_layer_norm(x, norm_weight, norm_bias, residual, is_rms, eps, True, True)
        return cpu_linear(linear, y), res
    _check_linear(x, linear.weight, linear.bias)
    _checks.tensor("norm_weight", norm_weight, shape=(x.shape[1],), device=x.device)
    _checks.tensor("norm_bias", norm_bias, shape=(x.shape[1],), device=x.device, optional=True)
    res = _kernels.empty(tuple(x.shape), x, dtype=torch.float32)
    out = _fused(3 if is_rms else 4, x, None, norm_weight, linear.weight, linear.bias, x.shape[1], eps,
                 residual=residual, residual_out=res, norm_bias=None if is_rms else norm_bias)
    return out, res


def _norm_linear_conv(x, residual, norm_weight, norm_bias, linear, is_rms, eps, conv):
    state, conv_weight, conv_bias, activation = conv
    C = state.shape[1]
    fusable = (PRENORM and type(linear) is nn.Linear and (residual is None or residual.dtype == torch.float32)
               and not torch.compiler.is_compiling() and _fusable(x, None, linear.weight, 1)
               and _conv_epilogue_ok(x, linear.weight.shape[0], conv))
    if not fusable:
        out, res = norm_linear(x, residual, norm_weight, norm_bias, linear, is_rms=is_rms, eps=eps)
        return out, res, causal_conv1d_update(out[:, :C], state, conv_weight, conv_bias, activation)
    _check_linear(x, linear.weight, linear.bias)
    _checks.tensor("residual", residual, shape=tuple(x.shape), device=x.device, optional=True)
    _checks.tensor("norm_weight", norm_weight, shape=(x.shape[1],), device=x.device)
    _checks.tensor("norm_bias", norm_bias, shape=(x.shape[1],), device=x.device, optional=True)
    _checks.tensor("conv_bias", conv_bias, shape=(C,), device=x.device, optional=True)
    res = _kernels.empty(tuple(x.shape), x, dtype=torch.float32)
    x_conv = _kernels.empty((x.shape[0], C), x)
    out = _fused(3 if is_rms else 4, x, None, norm_weight, linear.weight, linear.bias, x.shape[1], eps,
                 residual=residual, residual_out=res, norm_bias=None if is_rms else norm_bias,
                 conv=(state, conv_weight, conv_bias, x_conv, activation is not None), conv_rows=C)
    return out, res, x_conv
