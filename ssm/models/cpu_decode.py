"""A decode step of a MixerModel made of prenorm Mamba-1 / Mamba-2 blocks on the CPU, as prepared
kernel calls: one C++ call per Mamba-1 block (ssm.ops.mamba1_block_decode), six per Mamba-2 block
(ssm.models._mamba2_decode_calls: the kernels its step reaches through the ops).

The plan (kept on the InferenceParams it decodes with, so it lives as long as that decode's cache)
binds every block's weights, cached states and scratch once on two buffers that carry the hidden
states and the float32 residual stream from block to block; a step is then the embedding row, the
blocks' binding calls and the final norm, with none of the ops' Python. Before each step it
checks that nothing it bound moved (data pointers, the versions of what it reads through copies, the
cache's entries, the thread count) and builds itself again if something did. Models it does not take (other mixers,
MLPs, batches over 4, autograd, a residual stream not in float32, ...) keep the per-block path."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from ssm import ops
from ssm.modules import _states
from ssm.modules import block as _block
from ssm.models import _mamba2_decode_calls as _m2
from ssm.modules.mamba1 import Mamba1
from ssm.ops import _kernels
from ssm.ops import mamba1_block_decode as _m1b
from ssm.ops.norm_gemv import CPU_MAX_BATCH
from ssm.utils import dispatch

_ATTR = "_cpu_mamba1_stack_plan"


def _plain_mamba1(m) -> bool:
    return (type(m) is Mamba1 and m._plain_projections() and m.activation == "silu"
            and type(m.in_proj) is nn.Linear and type(m.out_proj) is nn.Linear)


def _plain_block(layer) -> bool:
    """A prenorm Block(Mamba1 or Mamba2) without MLP whose projections are plain nn.Linear layers."""
    if type(layer) is not _block.Block or layer.mlp is not None:
        return False
    return (layer.fused_add_norm and layer.residual_in_fp32 and isinstance(layer.norm, (nn.LayerNorm, ops.RMSNorm))
            and layer.norm.weight is not None and (_plain_mamba1(layer.mixer) or _m2.plain(layer.mixer)))


def _applies(model, input_ids: Tensor, inference_params, mixer_kwargs: dict) -> bool:
    """One token per row past a cached prefix, on the CPU, no autograd, every block plain."""
    if not _m1b.ENABLED or not _block.PRENORM_DECODE or mixer_kwargs or inference_params is None:
        return False
    if inference_params.seqlen_offset <= 0 or input_ids.dim() != 2 or input_ids.shape[1] != 1:
        return False
    if not input_ids.is_cpu or not 0 < input_ids.shape[0] <= CPU_MAX_BATCH or torch.compiler.is_compiling():
        return False
    norm_f = model.norm_f
    if not (model.fused_add_norm and model.residual_in_fp32 and isinstance(norm_f, (nn.LayerNorm, ops.RMSNorm))
            and norm_f.weight is not None):
        return False
    emb = model.embedding
    if type(emb) is not nn.Embedding or emb.max_norm is not None or not emb.weight.is_cpu:
        return False
    if torch.is_grad_enabled() and emb.weight.requires_grad:
        return False
    return len(model.layers) > 0 and all(_plain_block(layer) for layer in model.layers)


class StackPlan:
    """Every block's kernel call for one model, batch and cache (see the module docstring)."""

    def __init__(self, model, batch: int, inference_params):
        self.model, self.batch = model, batch
        emb = model.embedding.weight
        # hidden (B, d_model) in the activation dtype; residual (B, d_model) float32
        self.hidden = _kernels.empty((batch, emb.shape[1]), emb)
        self.residual = _kernels.empty((batch, emb.shape[1]), emb, dtype=torch.float32)
        cache = inference_params.key_value_memory_dict
        # steps: (kernel, args) in order; keep: what their arguments point into
        self.steps, self.keep, watched = [], [], [emb]
        for i, layer in enumerate(model.layers):
            block = self._block_steps(layer, inference_params, add_residual=i > 0)
            if block is None:
                self.steps = None
                return
            self.steps += block[0]
            self.keep += block[1]
            watched += [p for p in layer.parameters()]
        watched += list(model.norm_f.parameters())
        self.final_norm = self._final_norm(model.norm_f)
        self.cache_entries = [(cache, idx, cache[idx]) for idx in cache]
        states = [s for _, _, entry in self.cache_entries for s in _states_of(entry)]
        # moved data: every weight's and state's pointer; changed values: the versions of what the
        # plan reads through a copy (bf16 parameters' float32 copies, A from A_log); the rest it reads in place
        self.pointers = watched + states
        copied = [p for p in watched if p.dtype != torch.float32 or not p.is_contiguous()]
        self.versioned = [p for p in copied + [layer.mixer.A_log for layer in model.layers] if not p.is_inference()]
        self.key = self._key()

    def _block_steps(self, layer, inference_params, add_residual: bool) -> Optional[tuple[list, list]]:
        m, norm = layer.mixer, layer.norm
        if type(m) is not Mamba1:
            return _m2.block_steps(layer, inference_params, self.hidden, self.residual, add_residual)
        conv_state, ssm_state = m._get_states_from_cache(inference_params, self.batch)
        if not _m1b.kernel_ok(self.hidden, self.residual, m.in_proj.weight, m.out_proj.weight, conv_state,
                              m.x_proj.weight, m.dt_proj.weight, ssm_state):
            return None
        call = _m1b.BlockCall(
            self.hidden, self.residual, add_residual, norm.weight, getattr(norm, "bias", None),
            _block.is_rms_norm(norm), norm.eps, m.in_proj.weight, m.in_proj.bias, conv_state, m.conv1d.weight,
            m.conv1d.bias, m.x_proj.weight, m.dt_proj.weight, m.dt_proj.bias, _states.decode_A(m), m.D, ssm_state,
            m.out_proj.weight, m.out_proj.bias, m.activation)
        return [(call.fn, call.args)], [call]

    def _final_norm(self, norm):
        """(kernel, args before the output's view, its threads): norm_f(hidden + residual) as the
        layer_norm_fwd call of ops.layer_norm_fn(..., prenorm=False, residual_in_fp32=True)."""
        f32, r = _kernels.float32_param, _kernels.ref
        w, b = f32(norm.weight), f32(getattr(norm, "bias", None))
        self.keep += [w, b]
        B, D = self.hidden.shape
        return (dispatch.cpu_module().layer_norm_fwd,
                (B, D, _kernels.dtype_code(self.hidden), r(self.hidden), r(w), r(b), 0, r(self.residual), 0),
                (None, float(norm.eps), _block.is_rms_norm(norm), _kernels.cpu_threads(B * D)))

    def _key(self) -> tuple:
        # (buffers made under inference mode cannot be written outside it: a change of mode rebuilds)
        return (torch.get_num_threads(), _kernels.forced_backend_value(), torch.is_inference_mode_enabled(),
                [p.data_ptr() for p in self.pointers], [p._version for p in self.versioned])

    def valid(self, model, batch: int) -> bool:
        """Built for this model and batch, and nothing it bound moved since."""
        if self.steps is None or model is not self.model or batch != self.batch:
            return False
        if any(cache.get(idx) is not entry for cache, idx, entry in self.cache_entries):
            return False
        return self._key() == self.key

    def run(self, input_ids: Tensor) -> Tensor:
        """input_ids (B, 1) -> the final normed hidden states (B, 1, d_model); the cache updated in place."""
        torch.index_select(self.model.embedding.weight, 0, input_ids.view(-1), out=self.hidden)
        for kernel, args in self.steps:
            kernel(*args)
        kernel, head, tail = self.final_norm
        out = _kernels.empty((self.batch, 1, self.hidden.shape[1]), self.hidden)
        kernel(*head, (out.data_ptr(), out.stride(0), out.stride(2)), *tail)
        return out


def _states_of(entry) -> list:
    return [s for s in (entry if isinstance(entry, (tuple, list)) else (entry,)) if isinstance(s, Tensor)]


def stack_plan(model, input_ids: Tensor, inference_params, mixer_kwargs: dict) -> Optional[StackPlan]:
    """The plan that runs this step, or None when the model's per-block path should."""
    if not _applies(model, input_ids, inference_params, mixer_kwargs):
        return None
    plan = inference_params.__dict__.get(_ATTR)
    batch = input_ids.shape[0]
    if plan is not None and plan.valid(model, batch):
        return plan
    if plan is not None and plan.steps is None and plan.model is model and plan.batch == batch:
        return None  # a block the kernel does not take (dtypes, strides): decided once per cache
    plan = StackPlan(model, batch, inference_params)
    inference_params.__dict__[_ATTR] = plan
    return plan if plan.steps is not None else None
