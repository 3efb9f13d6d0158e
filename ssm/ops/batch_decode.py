"""The conv update of a decode batch's token on Mamba-2's channels-last conv cache (B, D, 4), unit stride
along D: ``conv_update_cl``, one CUDA kernel (ssm/ops/cuda/batch_decode.cu) with 32-bit channel offsets and
every load before its stores, which ``Mamba2.step`` uses past conv_state_step's fused batches (H200,
mamba2-130m b64: 2.3 us a call instead of the general kernel's 4.55; 0.867 instead of 0.991 ms a step).

Elsewhere (CPU, compiling, autograd, layouts the kernel does not take) it is
``causal_conv1d_update``, with the same results. No host synchronization (CUDA-graph capturable).

``lt_linear``: F.linear on CUDA with cublasLt's heuristic preferred (torch's preferred_blas_library) for
Mamba-1's out_proj past batch 4 (H200, b64 4096 -> 2048: 9.8 us instead of 11.1 with a split-K reduce;
the other b64 projections took the same time either way).

``narrow_linear``: F.linear(x, weight) for a narrow weight (at most 256 outputs: Mamba-1's x_proj) in one
kernel on CUDA (a warp an output, 4 rows a block, no split-K).

``conv_xproj``: Mamba-1's decode conv update and x_proj past batch 4 in one CUDA kernel (ssm/ops/cuda/conv_xproj.cu:
a block per 4 rows does both for them); off by default until a device round has run it
(SSM_BATCH_CONV_XPROJ=1 turns it on; off: the conv update kernel, then narrow_linear)."""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ssm.ops import _checks, _kernels
from ssm.ops.conv import _ACTIVATIONS, causal_conv1d_update
from ssm.utils import dispatch

XPROJ = os.environ.get("SSM_BATCH_CONV_XPROJ", "0") == "1"  # off until the device has run it
_NARROW_MAX_OUT = 256
# weights past this stay on cuBLAS (H200 round 1b, 1.4b's x_proj 4096 -> 160: 10.4 us on the kernel vs 4.8 + a 1.8 us
# split-K reduce on cuBLAS; 130m's 1536 -> 80: 4.6 vs 4.4, and the step 0.720 vs 0.744 ms with one kernel fewer)
_NARROW_MAX_BYTES = 512 << 10


def _check(x, conv_state, weight, bias, activation):
    _checks.tensor("x", x, ndim=2)
    batch, D = x.shape
    _checks.tensor("conv_state", conv_state, shape=(batch, D, None), device=x.device)
    _checks.tensor("weight", weight, ndim=(2, 3), device=x.device)
    if weight.shape[0] != D or (weight.dim() == 3 and weight.shape[1] != 1):
        raise ValueError(f"weight: expected shape ({D}, W), got {tuple(weight.shape)}")
    _checks.tensor("bias", bias, shape=(D,), device=x.device, optional=True)
    _checks.choice("activation", activation, _ACTIVATIONS)


def _kernel_ok(x, conv_state, weight, bias) -> bool:
    if x.device.type != "cuda" or dispatch.forced_backend() not in (None, "cuda"):
        return False
    if torch.compiler.is_compiling() or not dispatch.has_cuda_kernels():
        return False
    if not hasattr(dispatch.cuda_module(), "batch_conv"):
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return False
    return (x.dtype in _kernels.KERNEL_DTYPES and conv_state.dtype == x.dtype and conv_state.shape[-1] == 4
            and conv_state.stride(1) == 1 and 2 <= weight.shape[-1] <= 4 and 1 <= x.shape[0] <= 65535)


def _launch(x, conv_state, weight, bias, activation):
    batch, D = x.shape
    f32 = _kernels.float32_param
    w = f32(weight)  # the parameter itself: its float32 copy is cached
    w = w.view(D, w.shape[-1]) if w.dim() == 3 else w
    out = _kernels.empty((batch, D), x)
    r = _kernels.ref
    dispatch.cuda_module().batch_conv(
        _kernels.dtype_code(x), batch, D, w.shape[-1], conv_state.shape[-1], r(x), r(conv_state), r(w),
        r(f32(bias)), r(out), activation is not None, _kernels.exec_arg("cuda", x))
    return out


def conv_update_cl(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                   activation: Optional[str] = None) -> Tensor:
    """causal_conv1d_update(x, conv_state, weight, bias, activation) for one token: x (B, D); conv_state
    (B, D, S) updated in place; weight (D, W) or (D, 1, W); bias (D,) -> (B, D) like x. One kernel on CUDA
    for a channels-last cache of four entries (Mamba-2's)."""
    _check(x, conv_state, weight, bias, activation)
    if _kernel_ok(x, conv_state, weight, bias):
        return _launch(x, conv_state, weight, bias, activation)
    return causal_conv1d_update(x, conv_state, weight, bias, activation)


def lt_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """F.linear(x, weight, bias), on CUDA with cublasLt preferred for this call."""
    if not x.is_cuda or torch.compiler.is_compiling():
        return F.linear(x, weight, bias)
    prev = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library("cublaslt")
    try:
        return F.linear(x, weight, bias)
    finally:
        torch.backends.cuda.preferred_blas_library(prev)


def _narrow_ok(x, weight) -> bool:
    if not x.is_cuda or dispatch.forced_backend() not in (None, "cuda") or torch.compiler.is_compiling():
        return False
    if not dispatch.has_cuda_kernels() or not hasattr(dispatch.cuda_module(), "batch_linear_narrow"):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    per = 16 // x.element_size()
    return (x.dtype in _kernels.KERNEL_DTYPES and weight.dtype == x.dtype and x.dim() == 2
            and 1 <= weight.shape[0] <= _NARROW_MAX_OUT and weight.numel() * weight.element_size() <= _NARROW_MAX_BYTES
            and x.shape[1] % 8 == 0 and 1 <= x.shape[0] <= 65535 * 4
            and x.stride(1) == 1 and x.stride(0) % per == 0 and x.data_ptr() % 16 == 0 and weight.stride(1) == 1
            and weight.stride(0) % per == 0 and weight.data_ptr() % 16 == 0)


def narrow_linear(x: Tensor, weight: Tensor) -> Tensor:
    """F.linear(x, weight) for x (B, K), weight (R, K): one kernel on CUDA for R <= 256, weights up to 512 KB,
    K a multiple of 8 and 16-byte aligned rows; F.linear elsewhere."""
    _checks.tensor("x", x, ndim=2)
    _checks.tensor("weight", weight, shape=(None, x.shape[1]), device=x.device)
    if not _narrow_ok(x, weight):
        return F.linear(x, weight)
    batch, K = x.shape
    out = _kernels.empty((batch, weight.shape[0]), x)
    r = _kernels.ref
    dispatch.cuda_module().batch_linear_narrow(_kernels.dtype_code(x), batch, K, weight.shape[0], r(x), r(weight),
                                               r(out), _kernels.exec_arg("cuda", x))
    return out


def _xproj_ok(x, state, cw, cb, weight) -> bool:
    if not XPROJ or not x.is_cuda or dispatch.forced_backend() not in (None, "cuda") or torch.compiler.is_compiling():
        return False
    if not dispatch.has_cuda_kernels() or not hasattr(dispatch.cuda_module(), "conv_xproj"):
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, state, cw, cb, weight)):
        return False
    C, f32 = x.shape[1], _kernels.float32_param
    return (x.dtype in (torch.float16, torch.bfloat16) and state.dtype == x.dtype and weight.dtype == x.dtype
            and state.shape[-1] == 4 and cw.shape[-1] == 4 and C % 8 == 0 and C <= 6144
            and weight.numel() * weight.element_size() <= _NARROW_MAX_BYTES and 1 <= x.shape[0] <= 65535 * 4
            and state.stride(2) == 1 and state.stride(1) == 4 and state.stride(0) % 8 == 0
            and state.data_ptr() % 16 == 0 and _rows16(x) and _rows16(weight) and f32(cw).data_ptr() % 16 == 0)


def _rows16(t: Tensor) -> bool:
    return t.stride(-1) == 1 and t.stride(0) % 8 == 0 and t.data_ptr() % 16 == 0


def conv_xproj(x: Tensor, conv_state: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor],
               activation: Optional[str], weight: Tensor):
    """Mamba-1's decode conv update then x_proj: x (B, C), conv_state (B, C, S) updated in place, conv_weight (C, W)
    or (C, 1, W), conv_bias (C,), weight (R, C) -> (x_conv (B, C), x_conv @ weight^T (B, R)). One kernel on CUDA
    (16-bit, S = W = 4 with rows of 4 contiguous entries, C a multiple of 8, weights up to 512 KB)."""
    _check(x, conv_state, conv_weight, conv_bias, activation)
    _checks.tensor("weight", weight, shape=(None, x.shape[1]), device=x.device)
    if not _xproj_ok(x, conv_state, conv_weight, conv_bias, weight):
        x_conv = causal_conv1d_update(x, conv_state, conv_weight, conv_bias, activation)
        return x_conv, narrow_linear(x_conv, weight)
    batch, C = x.shape
    f32, r = _kernels.float32_param, _kernels.ref
    cw = f32(conv_weight)
    x_conv, out = _kernels.empty((batch, C), x), _kernels.empty((batch, weight.shape[0]), x)
    dispatch.cuda_module().conv_xproj(_kernels.dtype_code(x), batch, C, weight.shape[0], r(x), r(conv_state),
                                      r(cw.view(C, 4)), r(f32(conv_bias)), r(x_conv), r(weight), r(out),
                                      activation is not None, _kernels.exec_arg("cuda", x))
    return x_conv, out
