"""The conv update of a decode batch's token (batch > 4 in the modules), in one CUDA kernel each
(ssm/ops/cuda/batch_decode.cu):

- ``conv_update_cl``: Mamba-2's channels-last conv cache (B, D, 4) (unit stride along D);
- ``conv_xproj``: Mamba-1's conv update followed by x_proj on its output, one kernel instead of the conv
  update and a cuBLAS GEMM (the output is the conv output rounded to x's dtype, times x_proj's weight,
  summed in float32, as the composition computes it).

Elsewhere (CPU, compiling, autograd, layouts the kernel does not take, SSM_BATCH_CONV=0) both are the
composition of ``causal_conv1d_update`` and ``F.linear``, with the same results. No host
synchronization (CUDA-graph capturable)."""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ssm.ops import _checks, _kernels
from ssm.ops.conv import _ACTIVATIONS, causal_conv1d_update
from ssm.utils import dispatch

ENABLED = os.environ.get("SSM_BATCH_CONV", "0") == "1"
_CL = 8  # the x_proj kernel's cluster: D a multiple of 8 * 8, at most 1024 channels a block
_MAX_OUT = 256


def _check(x, conv_state, weight, bias, activation):
    _checks.tensor("x", x, ndim=2)
    batch, D = x.shape
    _checks.tensor("conv_state", conv_state, shape=(batch, D, None), device=x.device)
    _checks.tensor("weight", weight, ndim=(2, 3), device=x.device)
    if weight.shape[0] != D or (weight.dim() == 3 and weight.shape[1] != 1):
        raise ValueError(f"weight: expected shape ({D}, W), got {tuple(weight.shape)}")
    _checks.tensor("bias", bias, shape=(D,), device=x.device, optional=True)
    _checks.choice("activation", activation, _ACTIVATIONS)


def _kernel_ok(x, conv_state, weight, bias, xproj=None) -> bool:
    if not ENABLED or x.device.type != "cuda" or dispatch.forced_backend() not in (None, "cuda"):
        return False
    if torch.compiler.is_compiling() or not dispatch.has_cuda_kernels():
        return False
    if not hasattr(dispatch.cuda_module(), "batch_conv"):
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, xproj)):
        return False
    W = weight.shape[-1]
    return (x.dtype in _kernels.KERNEL_DTYPES and conv_state.dtype == x.dtype and conv_state.shape[-1] == 4
            and 2 <= W <= 4 and x.shape[0] >= 1 and (xproj is None or xproj.dtype == x.dtype))


def _launch(x, conv_state, weight, bias, activation, xproj=None):
    batch, D = x.shape
    f32 = _kernels.float32_param
    w = f32(weight)  # the parameter itself: its float32 copy is cached
    w = w.view(D, w.shape[-1]) if w.dim() == 3 else w
    out = _kernels.empty((batch, D), x)
    nout = 0 if xproj is None else xproj.shape[0]
    xdbl = None if xproj is None else _kernels.empty((batch, nout), x)
    r = _kernels.ref
    dispatch.cuda_module().batch_conv(
        _kernels.dtype_code(x), batch, D, w.shape[-1], conv_state.shape[-1], nout, r(x), r(conv_state), r(w),
        r(f32(bias)), r(out), r(xproj), r(xdbl), activation is not None, _kernels.exec_arg("cuda", x))
    return out, xdbl


def conv_update_cl(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                   activation: Optional[str] = None) -> Tensor:
    """causal_conv1d_update(x, conv_state, weight, bias, activation) for one token: x (B, D); conv_state
    (B, D, S) updated in place; weight (D, W) or (D, 1, W); bias (D,) -> (B, D) like x. One kernel on CUDA
    for a channels-last cache of four entries (Mamba-2's)."""
    _check(x, conv_state, weight, bias, activation)
    if _kernel_ok(x, conv_state, weight, bias) and conv_state.stride(1) == 1:
        return _launch(x, conv_state, weight, bias, activation)[0]
    return causal_conv1d_update(x, conv_state, weight, bias, activation)


def _xproj_fits(x, conv_state, xproj) -> bool:
    D, es = x.shape[1], conv_state.element_size()
    return (D % (_CL * 8) == 0 and D // _CL <= 1024 and 1 <= xproj.shape[0] <= _MAX_OUT and xproj.stride(1) == 1
            and xproj.stride(0) % 8 == 0 and xproj.data_ptr() % 16 == 0 and conv_state.stride(2) == 1
            and conv_state.stride(0) % 4 == 0 and conv_state.stride(1) % 4 == 0
            and conv_state.data_ptr() % (4 * es) == 0)


def conv_xproj(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor], activation: Optional[str],
               xproj_weight: Tensor) -> tuple[Tensor, Tensor]:
    """Mamba-1's conv update and x_proj for one token: x (B, D) -> (x_conv (B, D), x_dbl (B, R)) with
    x_conv = causal_conv1d_update(x, conv_state, weight, bias, activation) (conv_state (B, D, S) updated in
    place) and x_dbl = F.linear(x_conv, xproj_weight) (xproj_weight (R, D)). One kernel on CUDA for state rows
    of four contiguous entries, D a multiple of 64 up to 8192 and R <= 256."""
    _check(x, conv_state, weight, bias, activation)
    _checks.tensor("xproj_weight", xproj_weight, shape=(None, x.shape[1]), device=x.device)
    if _kernel_ok(x, conv_state, weight, bias, xproj_weight) and _xproj_fits(x, conv_state, xproj_weight):
        return _launch(x, conv_state, weight, bias, activation, xproj_weight)
    x_conv = causal_conv1d_update(x, conv_state, weight, bias, activation)
    return x_conv, F.linear(x_conv, xproj_weight)
