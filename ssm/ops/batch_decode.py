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
kernel on CUDA (a warp an output, 4 rows a block, no split-K)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ssm.ops import _checks, _kernels
from ssm.ops.conv import _ACTIVATIONS, causal_conv1d_update
from ssm.utils import dispatch

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

