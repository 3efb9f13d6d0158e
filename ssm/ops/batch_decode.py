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

``linear_conv``: F.linear(x, weight, bias) for a decode batch with, optionally, the width-4 conv update of a range
of its output columns (Mamba-1's in_proj + conv update) in one tensor-core kernel on CUDA (ssm/ops/cuda/batch_gemm.cu:
a block per 64 rows x 32 outputs, the whole K in shared memory or chunks of 256 through a ring); SSM_BATCH_GEMM=0:
F.linear then the conv update kernel. ``norm_linear_conv``: a prenorm block's residual add + norm folded into that
kernel (its rows normalized in shared memory; K <= 1152); SSM_BATCH_GEMM_NORM=0: the norm kernel, then linear_conv."""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ssm.ops import _checks, _kernels
from ssm.ops.conv import _ACTIVATIONS, causal_conv1d_update
from ssm.ops.norm import fused_layer_norm
from ssm.utils import dispatch

GEMM = os.environ.get("SSM_BATCH_GEMM", "1") != "0"
NORM = os.environ.get("SSM_BATCH_GEMM_NORM", "1") != "0"
_GEMM_MAX_K, _GEMM_CHUNK = 1152, 256  # the whole K in shared memory up to 1152, past it chunks of 256
_GEMM_MIN_WAVE_USE = 0.85  # past one wave of blocks, the share of the last wave's SMs busy must reach this
_SMS: dict = {}
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


def _rows_ok(t: Tensor) -> bool:
    return t.stride(-1) == 1 and t.stride(0) % 8 == 0 and t.data_ptr() % 16 == 0


def _waves_ok(x, N) -> bool:
    """The grid (a block per 64 rows x 32 outputs, one an SM) fills one wave, or its last wave nearly."""
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if dev not in _SMS:
        _SMS[dev] = torch.cuda.get_device_properties(dev).multi_processor_count
    blocks = -(-N // 32) * -(-x.shape[0] // 64)
    waves = -(-blocks // _SMS[dev])
    return waves == 1 or blocks / (waves * _SMS[dev]) >= _GEMM_MIN_WAVE_USE


def _gemm_ok(x, weight, bias, conv, conv_lo) -> bool:
    if not GEMM or not x.is_cuda or dispatch.forced_backend() not in (None, "cuda") or torch.compiler.is_compiling():
        return False
    if not dispatch.has_cuda_kernels() or not hasattr(dispatch.cuda_module(), "batch_gemm"):
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return False
    N, K = weight.shape
    ok = (bias is None and x.dtype in (torch.float16, torch.bfloat16) and weight.dtype == x.dtype
          and K % 16 == 0 and (16 <= K <= _GEMM_MAX_K or K % _GEMM_CHUNK == 0) and N % 8 == 0 and _rows_ok(x)
          and _rows_ok(weight) and _waves_ok(x, N))
    if conv is None or not ok:
        return ok
    state, cw, cb, _ = conv
    C, (s0, sc, sj) = state.shape[1], state.stride()
    layout = (sj == 1 and sc == 4) or (sc == 1 and sj % 8 == 0)  # (B, C, 4) rows or channels-last
    return (state.dtype == x.dtype and state.shape[-1] == 4 and cw.shape[-1] == 4 and conv_lo % 8 == 0
            and C % 8 == 0 and conv_lo + C <= N and layout and s0 % 8 == 0 and state.data_ptr() % 16 == 0
            and not (torch.is_grad_enabled() and (cw.requires_grad or (cb is not None and cb.requires_grad)))
            and all(t is None or _kernels.float32_param(t).data_ptr() % 16 == 0 for t in (cw, cb)))


def _check_conv(x, N, conv, conv_lo):
    state, cw, cb, activation = conv
    _checks.tensor("conv_state", state, shape=(x.shape[0], None, None), device=x.device)
    C = state.shape[1]
    if not 0 <= conv_lo <= N - C:
        raise ValueError(f"conv_lo: expected 0 <= conv_lo <= {N - C} (out columns {N}, conv channels {C}), "
                         f"got {conv_lo}")
    _checks.tensor("conv_weight", cw, ndim=(2, 3), device=x.device)
    if cw.shape[0] != C or (cw.dim() == 3 and cw.shape[1] != 1):
        raise ValueError(f"conv_weight: expected shape ({C}, W), got {tuple(cw.shape)}")
    _checks.tensor("conv_bias", cb, shape=(C,), device=x.device, optional=True)
    _checks.choice("activation", activation, _ACTIVATIONS)


def linear_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, conv=None, conv_lo: int = 0):
    """F.linear(x, weight, bias) for x (B, K), weight (N, K) -> out (B, N); with conv = (conv_state (B, C, S),
    conv_weight (C, W) or (C, 1, W), conv_bias (C,) or None, activation) also
    causal_conv1d_update(out[:, conv_lo:conv_lo + C], conv_state, ...) (conv_state updated in place) -> (out, x_conv).
    One kernel on CUDA (16-bit, no bias, K <= 1152 a multiple of 16 or a multiple of 256, N and C multiples of 8,
    width and S 4, a grid that fills its waves)."""
    _checks.tensor("x", x, ndim=2)
    _checks.tensor("weight", weight, shape=(None, x.shape[1]), device=x.device)
    _checks.tensor("bias", bias, shape=(weight.shape[0],), device=x.device, optional=True)
    if conv is not None:
        _check_conv(x, weight.shape[0], conv, conv_lo)
    if not _gemm_ok(x, weight, bias, conv, conv_lo):
        out = F.linear(x, weight, bias)
        if conv is None:
            return out
        state, cw, cb, activation = conv
        return out, conv_update_cl(out[:, conv_lo:conv_lo + state.shape[1]], state, cw, cb, activation)
    return _gemm_launch(x, weight, conv, conv_lo)


def _gemm_launch(x, weight, conv, conv_lo, norm=None):
    batch, K = x.shape
    N = weight.shape[0]
    out = _kernels.empty((batch, N), x)
    r, f32 = _kernels.ref, _kernels.float32_param
    if conv is None:
        conv_args, C, x_conv, silu = (None, None, None, None), 0, None, False
    else:
        state, cw, cb, activation = conv
        C = state.shape[1]
        w = f32(cw)
        x_conv = _kernels.empty((batch, C), x)
        conv_args, silu = (r(state), r(w.view(C, w.shape[-1])), r(f32(cb)), r(x_conv)), activation is not None
    if norm is None:
        norm_args, res = (None, None, None, None, 1e-5, True), None
    else:
        residual, nw, nb, is_rms, eps = norm
        res = _kernels.empty((batch, K), x, dtype=torch.float32)
        norm_args = (r(residual), r(f32(nw)), r(f32(nb)), r(res), float(eps), bool(is_rms))
    dispatch.cuda_module().batch_gemm(_kernels.dtype_code(x), batch, K, N, conv_lo, C, r(x), r(weight), r(out),
                                      *conv_args, silu, *norm_args, _kernels.exec_arg("cuda", x))
    outs = (out,) + (() if norm is None else (res,)) + (() if conv is None else (x_conv,))
    return outs[0] if len(outs) == 1 else outs


def _norm_ok(x, residual, nw, nb) -> bool:
    K = x.shape[1]
    f32 = _kernels.float32_param
    return (NORM and K <= _GEMM_MAX_K and (residual is None or (
                residual.dtype == torch.float32 and residual.stride(-1) == 1 and residual.stride(0) % 4 == 0
                and residual.data_ptr() % 16 == 0))
            and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (residual, nw, nb)))
            and all(t is None or f32(t).data_ptr() % 16 == 0 for t in (nw, nb)))


def norm_linear_conv(x: Tensor, residual: Optional[Tensor], norm_weight: Tensor, norm_bias: Optional[Tensor],
                     weight: Tensor, bias: Optional[Tensor] = None, conv=None, conv_lo: int = 0, *,
                     is_rms: bool = True, eps: float = 1e-5):
    """A prenorm block's residual add + norm feeding linear_conv, for one decoded token: x (B, K), residual (B, K)
    float32 or None -> (out, residual_out (B, K) float32) or, with conv, (out, residual_out, x_conv); the same as
    fused_layer_norm(x, norm_weight, norm_bias, residual, is_rms, eps, prenorm=True, residual_in_fp32=True) then
    linear_conv. One kernel on CUDA where linear_conv's kernel takes the whole K (K <= 1152, residual float32)."""
    _checks.tensor("x", x, ndim=2)
    _checks.tensor("residual", residual, shape=tuple(x.shape), device=x.device, optional=True)
    _checks.tensor("norm_weight", norm_weight, shape=(x.shape[1],), device=x.device)
    _checks.tensor("norm_bias", norm_bias, shape=(x.shape[1],), device=x.device, optional=True)
    _checks.tensor("weight", weight, shape=(None, x.shape[1]), device=x.device)
    _checks.tensor("bias", bias, shape=(weight.shape[0],), device=x.device, optional=True)
    if conv is not None:
        _check_conv(x, weight.shape[0], conv, conv_lo)
    if _gemm_ok(x, weight, bias, conv, conv_lo) and _norm_ok(x, residual, norm_weight, norm_bias):
        return _gemm_launch(x, weight, conv, conv_lo, (residual, norm_weight, norm_bias, is_rms, eps))
    h, res = fused_layer_norm(x, norm_weight, norm_bias, residual, is_rms, eps, True, True)
    out = linear_conv(h, weight, bias, conv, conv_lo)
    return (out, res) if conv is None else (out[0], res, out[1])
