"""Residual block "Add -> Norm -> Mixer [-> Add -> Norm -> MLP]" (``mamba_ssm.modules.block.Block``).

The residual stream travels beside the hidden states; with ``fused_add_norm`` the add and the
norm are one ``ssm.ops.layer_norm_fn`` call (LayerNorm or RMSNorm)."""
from __future__ import annotations

import os

import torch
import torch.nn as nn
from torch import Tensor

from ssm import ops


# Decode steps fold the block's add + norm into the mixer's in_proj (SSM_DECODE_PRENORM=0: off).
PRENORM_DECODE = os.environ.get("SSM_DECODE_PRENORM", "1") != "0"


def is_rms_norm(norm: nn.Module) -> bool:
    return isinstance(norm, ops.RMSNorm)


def add_norm(norm: nn.Module, hidden_states: Tensor, residual: Tensor | None, fused: bool,
             residual_in_fp32: bool, prenorm: bool = True):
    """residual += hidden_states; hidden = norm(residual). Returns (hidden, residual) if prenorm else hidden."""
    if fused:
        return ops.layer_norm_fn(hidden_states, norm.weight, norm.bias, residual=residual, prenorm=prenorm,
                                 residual_in_fp32=residual_in_fp32, eps=norm.eps, is_rms_norm=is_rms_norm(norm))
    residual = hidden_states + residual if residual is not None else hidden_states
    hidden_states = norm(residual.to(dtype=norm.weight.dtype))
    if not prenorm:
        return hidden_states
    return hidden_states, residual.to(torch.float32) if residual_in_fp32 else residual


class Block(nn.Module):
    def __init__(self, dim, mixer_cls, mlp_cls=nn.Identity, norm_cls=nn.LayerNorm, fused_add_norm=False,
                 residual_in_fp32=False):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.fused_add_norm = fused_add_norm
        self.norm = norm_cls(dim)
        self.mixer = mixer_cls(dim)
        if mlp_cls is not nn.Identity:
            self.norm2 = norm_cls(dim)
            self.mlp = mlp_cls(dim)
        else:
            self.mlp = None
        if self.fused_add_norm and not isinstance(self.norm, (nn.LayerNorm, ops.RMSNorm)):
            raise ValueError(f"norm_cls: fused_add_norm needs nn.LayerNorm or ssm.ops.RMSNorm, "
                             f"got {type(self.norm).__name__}")

    def forward(self, hidden_states: Tensor, residual: Tensor | None = None, inference_params=None, **mixer_kwargs):
        """hidden_states (B, L, D), residual (B, L, D) or None -> (hidden_states, residual)."""
        if self._decodes_prenorm(hidden_states, residual, inference_params, mixer_kwargs):
            # one decoded token: the add + norm folded into the mixer's in_proj (one kernel on CUDA)
            hidden_states, residual = self.mixer.step_prenorm(hidden_states, residual, self.norm, inference_params)
        else:
            hidden_states, residual = add_norm(self.norm, hidden_states, residual, self.fused_add_norm,
                                               self.residual_in_fp32)
            hidden_states = self.mixer(hidden_states, inference_params=inference_params, **mixer_kwargs)
        if self.mlp is not None:
            hidden_states, residual = add_norm(self.norm2, hidden_states, residual, self.fused_add_norm,
                                               self.residual_in_fp32)
            hidden_states = self.mlp(hidden_states)
        return hidden_states, residual

    def _decodes_prenorm(self, hidden_states, residual, inference_params, mixer_kwargs) -> bool:
        """A plain decode step (one token past a cached prefix, float32 residual stream) of a mixer
        with ``step_prenorm`` (Mamba1, Mamba2); PRENORM_DECODE = False turns it off."""
        return (PRENORM_DECODE and self.fused_add_norm and self.residual_in_fp32 and not mixer_kwargs
                and inference_params is not None and inference_params.seqlen_offset > 0
                and hidden_states.dim() == 3 and hidden_states.shape[1] == 1
                and (residual is None or residual.dtype == torch.float32) and hasattr(self.mixer, "step_prenorm"))

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        return self.mixer.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype, **kwargs)
