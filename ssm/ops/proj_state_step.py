"""One Mamba-1 decode step with the dt projection folded into the state step:
dt = dt_in @ dt_proj_weight^T, then selective_state_step (Mamba-1 layout).

On CUDA this is one kernel (the state step kernel with its dt_proj mode) instead of a GEMV and
the step; elsewhere, when compiling, or for arguments that mode does not take, it is F.linear then
the public op ``selective_state_step``, with the same results. ``Mamba1.step`` uses it;
``SSM_FUSED_DECODE=0`` turns the fused kernel off (ssm.ops.conv_state_step.FUSED)."""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from ssm.ops import _checks, _kernels
from ssm.ops import conv_state_step as _css
from ssm.ops.norm_gemv import small_matmul
from ssm.ops.state_step import selective_state_step
from ssm.utils import dispatch


def _check_args(state, x, dt_in, dt_proj_weight, A, B, C, D, z, dt_bias):
    _checks.tensor("state", state, ndim=3)
    batch, dim, N = state.shape
    dev = state.device
    _checks.tensor("x", x, shape=(batch, dim), device=dev)
    _checks.tensor("dt_in", dt_in, ndim=2, device=dev)
    _checks.tensor("dt_in", dt_in, shape=(batch, None))
    _checks.tensor("dt_proj_weight", dt_proj_weight, shape=(dim, dt_in.shape[1]), device=dev)
    _checks.tensor("A", A, shape=(dim, N), device=dev)
    _checks.tensor("B", B, shape=(batch, N), device=dev)
    _checks.tensor("C", C, shape=(batch, N), device=dev)
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        _checks.tensor(name, t, shape=(dim,), device=dev, optional=True)
    _checks.tensor("z", z, shape=(batch, dim), device=dev, optional=True)


ENABLED = True  # this fused form alone (SSM_FUSED_DECODE=0 turns off every fused decode form)


def _cuda_ok(x) -> bool:
    return (ENABLED and _css.FUSED and x.device.type == "cuda" and dispatch.forced_backend() in (None, "cuda")
            and dispatch.has_cuda_kernels())


def _fusable(state, x, dt_in, dt_proj_weight, B, C, z) -> bool:
    if not _cuda_ok(x) or not hasattr(dispatch.cuda_module(), "selective_state_step_proj"):
        return False
    # large batches: the kernel only in its lean Mamba-1 form (the general kernel's dt_proj mode lost to cuBLAS's
    # dt_proj there: H200, mamba-130m b64, 0.980 vs 0.861 ms per token)
    act, batch, rank = x.dtype, x.shape[0], dt_in.shape[1]
    small = 0 < batch <= _css.MAX_BATCH and (batch > SMALL_BATCH or rank <= SMALL_MAX_RANK)
    return (act in _kernels.KERNEL_DTYPES and state.dtype in _kernels.KERNEL_DTYPES
            and (small or _lean_large(state, x, dt_proj_weight))
            and dt_in.shape[1] > 0 and all(t is None or t.dtype == act for t in (dt_in, dt_proj_weight, B, C, z)))


# batches up to SMALL_BATCH fold dt_proj ranks up to SMALL_MAX_RANK; larger ranks run it through the small-batch
# GEMV (H200, b1 decode per token: mamba-1.4b, rank 128, 1.644 ms unfolded vs 2.097 folded into the general step
# kernel; mamba-130m, rank 48, 0.481 unfolded vs 0.460 folded)
SMALL_BATCH, SMALL_MAX_RANK = 4, 64
LARGE = os.environ.get("SSM_STEP_PROJ_LARGE", "1") == "1"  # the fused kernel past MAX_BATCH (0: cuBLAS's dt_proj)
LARGE_MAX_RANK = 64  # the largest dt_proj rank folded past MAX_BATCH
_HALF = (torch.float16, torch.bfloat16)


def _lean_large(state, x, w) -> bool:
    """The lean Mamba-1 kernel takes this dt_proj call (selective_state_step_lean.cuh use_lean): N = 16, 16-bit
    state and inputs, dt_proj rows of a multiple of 8 in 16-byte packs, rank <= 64 (H200, b64 decode per step:
    mamba-130m, rank 48, 0.786 ms folded vs 0.890 with cuBLAS's dt_proj; mamba-1.4b, rank 128, 3.035 vs 2.868)."""
    return (LARGE and state.shape[-1] == 16 and state.dtype in _HALF and x.dtype in _HALF and w.shape[1] % 8 == 0
            and w.shape[1] <= LARGE_MAX_RANK and w.stride(1) == 1 and w.stride(0) % 8 == 0 and w.data_ptr() % 16 == 0)


# batches up to SMALL_BATCH: the small-batch step kernel (m1_decode_step.cu, PDL, dt_proj ranks up to 128; H200,
# session 7: mamba-1.4b 1.572 vs 1.888 ms per token on the paths above, mamba-130m 0.303 vs 0.451)


def _small_step_ok(state, x, dt_in, w, B, C, z) -> bool:
    """The small-batch kernel takes the call: 16-bit or float32 activations, state in their dtype or float32,
    N <= 16 with unit stride, dt_proj rows contiguous, 16-byte aligned, rank a multiple of a 16-byte pack <= 128."""
    act, per = x.dtype, 16 // x.element_size()
    return (0 < x.shape[0] <= SMALL_BATCH and act in _kernels.KERNEL_DTYPES
            and state.dtype in (act, torch.float32) and state.shape[-1] <= 16 and state.stride(-1) == 1
            and all(t is None or t.dtype == act for t in (dt_in, w, B, C, z))
            and w.shape[1] % per == 0 and w.shape[1] <= 128 and w.stride(1) == 1 and w.stride(0) % per == 0
            and w.data_ptr() % 16 == 0 and hasattr(dispatch.cuda_module(), "m1_decode_step"))


def _small_step(state, x, dt_in, dt_proj_weight, A, B, C, D, z, dt_bias, softplus, early):
    batch, dim, N = state.shape
    f32 = _kernels.float32_param
    A, D, dt_bias = (t if t is None or t.dtype == torch.float32 else f32(t) for t in (A, D, dt_bias))
    out = _kernels.empty((batch, dim), x)
    r = _kernels.ref
    dispatch.cuda_module().m1_decode_step(
        _kernels.dtype_code(state), _kernels.dtype_code(x), batch, dim, N, dt_in.shape[1], r(state), r(x), r(dt_in),
        r(dt_proj_weight), r(A), r(B), r(C), r(D), r(z), r(dt_bias), r(out), softplus, early,
        _kernels.exec_arg("cuda", x))
    return out


def _fused(state, x, dt_in, dt_proj_weight, A, B, C, D, z, dt_bias, softplus):
    batch, dim, N = state.shape
    f32 = _kernels.float32_param
    A, D, dt_bias = (t if t is None or t.dtype == torch.float32 else f32(t) for t in (A, D, dt_bias))
    out = _kernels.empty((batch, dim), x)
    k = _kernels
    # the kernel's (B, H, P, N) view with H = dim channels of size P = 1
    modes = (k.UNIT_MID, k.UNIT_LAST, k.UNIT_LAST, k.UNIT_MID, k.UNIT_MID, k.UNIT_MID, k.UNIT_LAST, k.UNIT_LAST,
             k.UNIT_LAST, k.AS_IS, k.UNIT_LAST, k.AS_IS)
    refs = k.refs(modes, (state, x, dt_in, A, B, C, D, z, dt_bias, None, out, dt_proj_weight))
    dispatch.cuda_module().selective_state_step_proj(
        k.dtype_code(state), k.dtype_code(x), batch, dim, 1, N, 1, *refs[:11], softplus, dt_in.shape[1], refs[11],
        k.exec_arg("cuda", x))
    return out


def proj_state_step(state: Tensor, x: Tensor, dt_in: Tensor, dt_proj_weight: Tensor, A: Tensor, B: Tensor,
                    C: Tensor, D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                    dt_bias: Optional[Tensor] = None, softplus: bool = True, *,
                    state_settled: bool = False) -> Tensor:
    """One Mamba-1 decode step: state (B, D, N) updated in place; x, z (B, D); dt_in (B, R);
    dt_proj_weight (D, R); A (D, N); B, C (B, N); D, dt_bias (D,) -> y (B, D) like x.
    Same as selective_state_step(state, x, F.linear(dt_in, dt_proj_weight), A, B, C, D, z, dt_bias, softplus).
    state_settled=True promises that the kernel launched just before on the stream does not write state (as
    in Mamba1.step, where it is x_proj): the small-batch CUDA kernel then reads it while that kernel still runs."""
    _check_args(state, x, dt_in, dt_proj_weight, A, B, C, D, z, dt_bias)
    if (not torch.compiler.is_compiling() and _cuda_ok(x)
            and _small_step_ok(state, x, dt_in, dt_proj_weight, B, C, z)):
        return _small_step(state, x, dt_in, dt_proj_weight, A, B, C, D, z, dt_bias, softplus, state_settled)
    if torch.compiler.is_compiling() or not _fusable(state, x, dt_in, dt_proj_weight, B, C, z):
        return selective_state_step(state, x, small_matmul(dt_in, dt_proj_weight), A, B, C, D, z, dt_bias, softplus)
    return _fused(state, x, dt_in, dt_proj_weight, A, B, C, D, z, dt_bias, softplus)
