"""One decoded token through a whole prenorm Mamba-1 block (ssm.modules.block.Block around Mamba1):

    y, residual = fused_layer_norm(hidden, norm_weight, norm_bias, residual, is_rms, eps,
                                   prenorm=True, residual_in_fp32=True)
    x, z = (y @ in_proj_weight^T + in_proj_bias).chunk(2, dim=-1)
    hidden = mamba1_decode(x, z, conv_state, ...) @ out_proj_weight^T + out_proj_bias

On the CPU, for batches up to 4 without autograd, one C++ call (ssm/ops/cpu/mamba1_block_decode.cpp);
elsewhere the composition of the public ops, with the same results. ``BlockCall`` keeps a block's
kernel arguments on fixed buffers, so a decode loop (ssm.models.cpu_decode) pays one binding call
per block and token; SSM_CPU_BLOCK_DECODE=0 (or ENABLED = False) turns the kernel off."""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from ssm.ops import _checks, _kernels
from ssm.ops import mamba1_decode as _m1d
from ssm.ops.norm import fused_layer_norm
from ssm.ops.norm_gemv import gemv_linear
from ssm.utils import dispatch

ENABLED = os.environ.get("SSM_CPU_BLOCK_DECODE", "1") == "1"


def _check(hidden, residual, norm_weight, norm_bias, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias):
    _checks.tensor("hidden", hidden, ndim=2)
    (batch, d_model), dev = hidden.shape, hidden.device
    _checks.tensor("residual", residual, shape=(batch, d_model), device=dev, optional=True)
    _checks.tensor("norm_weight", norm_weight, shape=(d_model,), device=dev)
    _checks.tensor("norm_bias", norm_bias, shape=(d_model,), device=dev, optional=True)
    _checks.tensor("in_proj_weight", in_proj_weight, shape=(None, d_model), device=dev)
    if in_proj_weight.shape[0] % 2:
        raise ValueError(f"in_proj_weight: expected an even number of rows (x and z), got {in_proj_weight.shape[0]}")
    dim = in_proj_weight.shape[0] // 2
    _checks.tensor("in_proj_bias", in_proj_bias, shape=(2 * dim,), device=dev, optional=True)
    _checks.tensor("out_proj_weight", out_proj_weight, shape=(d_model, dim), device=dev)
    _checks.tensor("out_proj_bias", out_proj_bias, shape=(d_model,), device=dev, optional=True)


def kernel_ok(hidden: Tensor, residual: Optional[Tensor], in_proj_weight: Tensor, out_proj_weight: Tensor,
              conv_state: Tensor, x_proj_weight: Tensor, dt_proj_weight: Tensor, ssm_state: Tensor) -> bool:
    """The CPU kernel takes the block: mamba1_decode's kernel takes its inner part, one activation dtype,
    a float32 residual (or none), projections contiguous along their inputs, no autograd."""
    if not ENABLED or not hasattr(dispatch.cpu_module(), "mamba1_block_decode"):
        return False
    if residual is not None and residual.dtype != torch.float32:
        return False
    act = hidden.dtype
    if in_proj_weight.dtype != act or out_proj_weight.dtype != act:
        return False
    if in_proj_weight.stride(1) != 1 or out_proj_weight.stride(1) != 1:
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (hidden, residual, in_proj_weight, out_proj_weight)):
        return False
    x = hidden.new_empty(1).expand(hidden.shape[0], dt_proj_weight.shape[0])  # (B, D) metadata only
    return (_m1d._static_ok(x, x, conv_state, x_proj_weight, dt_proj_weight, ssm_state)
            and _m1d._dynamic_ok((conv_state, x_proj_weight, dt_proj_weight, ssm_state)))


class BlockCall:
    """A block's kernel call on fixed buffers: ``hidden`` (B, d_model) in the activation dtype is the
    block's input and then its output, ``residual`` (B, d_model) float32 the residual stream (both
    updated in place by ``run``); the weights, states and scratch are bound once (by data pointer:
    the caller rebuilds the call when one of them moves)."""

    def __init__(self, hidden, residual, add_residual, norm_weight, norm_bias, is_rms, eps, in_proj_weight,
                 in_proj_bias, conv_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D,
                 ssm_state, out_proj_weight, out_proj_bias, activation="silu"):
        (batch, d_model), dim = hidden.shape, dt_proj_weight.shape[0]
        f32 = _kernels.float32_param
        # float32 contiguous small parameters (kept alive here: the kernel reads them every call)
        self.params = [f32(t) for t in (norm_weight, norm_bias, in_proj_bias, conv_weight, conv_bias, dt_bias, A, D,
                                        out_proj_bias)]
        nw, nb, ipb, cw, cb, dtb, A32, D32, opb = self.params
        # scratch of the kernel's passes
        self.normed, self.xz, self.y = (_kernels.empty(shape, hidden) for shape in
                                        ((batch, d_model), (batch, 2 * dim), (batch, dim)))
        r = _kernels.ref
        self.fn = dispatch.cpu_module().mamba1_block_decode
        self.args = (
            _kernels.dtype_code(hidden), _kernels.dtype_code(ssm_state), batch, dim, ssm_state.shape[2],
            dt_proj_weight.shape[1], cw.shape[-1], conv_state.shape[2], activation is not None, d_model,
            add_residual, is_rms, float(eps), r(hidden), r(residual), r(nw), r(nb), r(self.normed),
            r(in_proj_weight), r(ipb), r(self.xz), r(conv_state), (cw.data_ptr(), cw.stride(0), cw.stride(-1)),
            r(cb), r(x_proj_weight), r(dt_proj_weight), r(dtb), r(D32), r(A32), r(ssm_state), r(self.y),
            r(out_proj_weight), r(opb), _kernels.exec_arg("cpu", hidden, batch * in_proj_weight.numel()))

    def run(self) -> None:
        self.fn(*self.args)


def _composed(hidden, residual, norm_weight, norm_bias, is_rms, eps, in_proj_weight, in_proj_bias, conv_state,
              conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, ssm_state, out_proj_weight,
              out_proj_bias, activation):
    y, residual = fused_layer_norm(hidden, norm_weight, norm_bias, residual, is_rms, eps, True, True)
    x, z = gemv_linear(y, in_proj_weight, in_proj_bias).chunk(2, dim=-1)
    y = _m1d.mamba1_decode(x, z, conv_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D,
                           ssm_state, activation)
    return gemv_linear(y, out_proj_weight, out_proj_bias), residual


def mamba1_block_decode(hidden: Tensor, residual: Optional[Tensor], norm_weight: Tensor, norm_bias: Optional[Tensor],
                        in_proj_weight: Tensor, in_proj_bias: Optional[Tensor], conv_state: Tensor,
                        conv_weight: Tensor, conv_bias: Optional[Tensor], x_proj_weight: Tensor,
                        dt_proj_weight: Tensor, dt_bias: Optional[Tensor], A: Tensor, D: Optional[Tensor],
                        ssm_state: Tensor, out_proj_weight: Tensor, out_proj_bias: Optional[Tensor] = None, *,
                        is_rms: bool = False, eps: float = 1e-5,
                        activation: Optional[str] = "silu") -> tuple[Tensor, Tensor]:
    """hidden (B, d_model), residual (B, d_model) float32 or None; norm_weight, norm_bias (d_model,);
    in_proj_weight (2D, d_model), in_proj_bias (2D,); out_proj_weight (d_model, D), out_proj_bias
    (d_model,); the inner part's arguments as mamba1_decode's (states updated in place) ->
    (hidden_out (B, d_model) like hidden, residual_out (B, d_model) float32)."""
    _check(hidden, residual, norm_weight, norm_bias, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias)
    args = (hidden, residual, norm_weight, norm_bias, is_rms, eps, in_proj_weight, in_proj_bias, conv_state,
            conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, ssm_state, out_proj_weight,
            out_proj_bias, activation)
    x = hidden.new_empty(1).expand(hidden.shape[0], in_proj_weight.shape[0] // 2)
    _m1d._check(x, x, conv_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, ssm_state,
                activation)
    if torch.compiler.is_compiling() or not kernel_ok(hidden, residual, in_proj_weight, out_proj_weight, conv_state,
                                                      x_proj_weight, dt_proj_weight, ssm_state):
        return _composed(*args)
    out = torch.empty_like(hidden, memory_format=torch.contiguous_format)
    res = torch.empty(hidden.shape, dtype=torch.float32)
    if residual is not None:
        res.copy_(residual)
    out.copy_(hidden)
    BlockCall(out, res, residual is not None, norm_weight, norm_bias, is_rms, eps, in_proj_weight, in_proj_bias,
              conv_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, ssm_state,
              out_proj_weight, out_proj_bias, activation).run()
    return out, res
