"""Causal language model (``mamba_ssm.models.mixer_seq_simple``): ``MixerModel`` backbone (embedding,
blocks of Mamba1 / Mamba2 / MHA mixers with optional gated MLPs, final norm) and
``MambaLMHeadModel`` (backbone + lm_head + generation). Same state_dict keys as the reference.

Differs from the reference (docs/compat.md): the weights are initialized once, with the
residual rescaling that counts the MLP (n_residuals_per_layer = 2 when d_intermediate > 0)."""
from __future__ import annotations

import copy
import math
from collections import namedtuple
from functools import partial

import torch
import torch.nn as nn

from ssm import ops
from ssm.distributed import sharding
from ssm.models import cpu_decode
from ssm.models.config import MambaConfig
from ssm.modules.attention import MHA
from ssm.modules import block
from ssm.modules.block import Block, add_norm
from ssm.modules.mamba1 import Mamba1
from ssm.modules.mamba2 import Mamba2
from ssm.modules.mlp import GatedMLP
from ssm.ops import cpu_matmul, norm_gemv
from ssm.ops.norm_gemv import CPU_MAX_BATCH, norm_linear, small_linear
from ssm.utils import weights
from ssm.utils.generation import GenerationMixin

CausalLMOutput = namedtuple("CausalLMOutput", ["logits"])

_MIXERS = {"Mamba1": Mamba1, "Mamba2": Mamba2}
# a CUDA decode step's final add + norm folded into lm_head (norm_gemv's add + norm prologue)
FOLD_FINAL_NORM = True
# a half-precision CPU prefill's logits of up to LOGIT_GROUPS * CPU_MAX_BATCH rows through the small-batch kernel
LOGIT_GROUPS = 8


def create_block(d_model, d_intermediate, ssm_cfg=None, attn_layer_idx=None, attn_cfg=None, norm_epsilon=1e-5,
                 rms_norm=False, residual_in_fp32=False, fused_add_norm=False, layer_idx=None, device=None,
                 dtype=None, process_group=None):
    """One Block: an MHA mixer if layer_idx is in attn_layer_idx, else the Mamba layer named by
    ssm_cfg["layer"] ("Mamba1" by default, or "Mamba2"); a GatedMLP when d_intermediate > 0.
    With a process_group, Mamba2 and MHA mixers and the MLP are tensor-parallel (inputs replicated)."""
    factory_kwargs = {"device": device, "dtype": dtype}
    tp_kwargs = {} if process_group is None else {"process_group": process_group, "sequence_parallel": False}
    ssm_cfg = copy.deepcopy(ssm_cfg) if ssm_cfg is not None else {}
    attn_cfg = attn_cfg if attn_cfg is not None else {}
    if layer_idx not in (attn_layer_idx or []):
        layer = ssm_cfg.pop("layer", "Mamba1")
        if layer not in _MIXERS:
            raise ValueError(f"ssm_cfg['layer']: expected one of {sorted(_MIXERS)}, got {layer!r}")
        mixer_tp = tp_kwargs if layer == "Mamba2" else {}
        mixer_cls = partial(_MIXERS[layer], layer_idx=layer_idx, **ssm_cfg, **mixer_tp, **factory_kwargs)
    else:
        mixer_cls = partial(MHA, layer_idx=layer_idx, **attn_cfg, **tp_kwargs, **factory_kwargs)
    norm_cls = partial(ops.RMSNorm if rms_norm else nn.LayerNorm, eps=norm_epsilon, **factory_kwargs)
    mlp_cls = nn.Identity if d_intermediate == 0 else partial(
        GatedMLP, hidden_features=d_intermediate, out_features=d_model, **tp_kwargs, **factory_kwargs)
    block = Block(d_model, mixer_cls, mlp_cls, norm_cls=norm_cls, fused_add_norm=fused_add_norm,
                  residual_in_fp32=residual_in_fp32)
    block.layer_idx = layer_idx
    return block


def _init_weights(module, n_layer, initializer_range=0.02, rescale_prenorm_residual=True, n_residuals_per_layer=1):
    """Applied with Module.apply: zero Linear biases (except those marked _no_reinit), N(0, range)
    embeddings, and rescale every out_proj/fc2 weight by 1/sqrt(n_residuals_per_layer * n_layer)
    (GPT-2's scheme for the residual stream)."""
    if isinstance(module, nn.Linear):
        if module.bias is not None and not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=initializer_range)
    if rescale_prenorm_residual:
        for name, p in module.named_parameters():
            if name in ("out_proj.weight", "fc2.weight"):
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                with torch.no_grad():
                    p /= math.sqrt(n_residuals_per_layer * n_layer)


class MixerModel(nn.Module):
    def __init__(self, d_model, n_layer, d_intermediate, vocab_size, ssm_cfg=None, attn_layer_idx=None,
                 attn_cfg=None, norm_epsilon=1e-5, rms_norm=False, initializer_cfg=None, fused_add_norm=False,
                 residual_in_fp32=False, device=None, dtype=None, process_group=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.embedding = nn.Embedding(vocab_size, d_model, **factory_kwargs)
        self.fused_add_norm = fused_add_norm
        self.layers = nn.ModuleList([
            create_block(d_model, d_intermediate=d_intermediate, ssm_cfg=ssm_cfg, attn_layer_idx=attn_layer_idx,
                         attn_cfg=attn_cfg, norm_epsilon=norm_epsilon, rms_norm=rms_norm,
                         residual_in_fp32=residual_in_fp32, fused_add_norm=fused_add_norm, layer_idx=i,
                         process_group=process_group, **factory_kwargs)
            for i in range(n_layer)])
        self.norm_f = (ops.RMSNorm if rms_norm else nn.LayerNorm)(d_model, eps=norm_epsilon, **factory_kwargs)
        self.apply(partial(_init_weights, n_layer=n_layer, **(initializer_cfg or {}),
                           n_residuals_per_layer=1 if d_intermediate == 0 else 2))

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        return {i: layer.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype, **kwargs)
                for i, layer in enumerate(self.layers)}

    def forward(self, input_ids, inference_params=None, **mixer_kwargs):
        """input_ids (B, L) -> final normed hidden states (B, L, d_model)."""
        plan = cpu_decode.stack_plan(self, input_ids, inference_params, mixer_kwargs)
        if plan is not None:  # a CPU decode step of Mamba-1 blocks: one C++ call per block
            return plan.run(input_ids)
        hidden_states, residual = self.forward_layers(input_ids, inference_params, **mixer_kwargs)
        return add_norm(self.norm_f, hidden_states, residual, self.fused_add_norm, self.residual_in_fp32,
                        prenorm=False)

    def forward_layers(self, input_ids, inference_params=None, **mixer_kwargs):
        """input_ids (B, L) -> (hidden_states, residual) of the last block, before the final norm."""
        hidden_states = self.embedding(input_ids)
        residual = None
        with cpu_matmul.buffers_for(input_ids):  # the layers' float32 product buffers, reused
            for layer in self.layers:
                hidden_states, residual = layer(hidden_states, residual, inference_params=inference_params,
                                                **mixer_kwargs)
        return hidden_states, residual


class MambaLMHeadModel(nn.Module, GenerationMixin):
    def __init__(self, config: MambaConfig, initializer_cfg=None, device=None, dtype=None, process_group=None):
        """With a process_group the model is tensor-parallel (docs/tensor_parallel.md): Mamba2, MHA and
        GatedMLP layers hold this rank's heads/channels; the rest is replicated, broadcast from rank 0."""
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.config = config
        self.process_group = process_group
        vocab_size = config.vocab_size
        pad = config.pad_vocab_size_multiple
        if vocab_size % pad != 0:
            vocab_size += pad - (vocab_size % pad)
        self.backbone = MixerModel(
            d_model=config.d_model, n_layer=config.n_layer, d_intermediate=config.d_intermediate,
            vocab_size=vocab_size, ssm_cfg=config.ssm_cfg, attn_layer_idx=config.attn_layer_idx,
            attn_cfg=config.attn_cfg, rms_norm=config.rms_norm, initializer_cfg=initializer_cfg,
            fused_add_norm=config.fused_add_norm, residual_in_fp32=config.residual_in_fp32,
            process_group=process_group, **factory_kwargs)
        self.lm_head = nn.Linear(config.d_model, vocab_size, bias=False, **factory_kwargs)
        # the backbone initialized its weights (once); lm_head keeps nn.Linear's init unless tied
        self.tie_weights()
        if process_group is not None and not self.lm_head.weight.is_meta:
            sharding.sync_replicated(self, process_group)

    def tie_weights(self):
        if self.config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        return self.backbone.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype, **kwargs)

    def forward(self, input_ids, position_ids=None, inference_params=None, num_last_tokens=0, **mixer_kwargs):
        """input_ids (B, L) -> CausalLMOutput(logits (B, L or num_last_tokens, padded vocab)).
        position_ids is accepted and ignored (positions come from the inference cache)."""
        if self._folds_final_norm(input_ids, inference_params, num_last_tokens, mixer_kwargs):
            return CausalLMOutput(logits=self._decode_logits(input_ids, inference_params))
        hidden_states = self.backbone(input_ids, inference_params=inference_params, **mixer_kwargs)
        if num_last_tokens > 0:
            hidden_states = hidden_states[:, -num_last_tokens:]
        return CausalLMOutput(logits=self._logits(hidden_states))

    def _folds_final_norm(self, input_ids, inference_params, num_last_tokens, mixer_kwargs) -> bool:
        """A CUDA decode step of one token for at most CPU_MAX_BATCH rows without autograd: the final
        add + norm folds into lm_head (one kernel; FOLD_FINAL_NORM = False turns it off)."""
        bb = self.backbone
        return (FOLD_FINAL_NORM and block.PRENORM_DECODE and input_ids.is_cuda and input_ids.dim() == 2
                and input_ids.shape[1] == 1 and input_ids.shape[0] <= CPU_MAX_BATCH and num_last_tokens <= 1
                and not mixer_kwargs and inference_params is not None and inference_params.seqlen_offset > 0
                and bb.fused_add_norm and bb.residual_in_fp32 and type(self.lm_head) is nn.Linear
                and isinstance(bb.norm_f, (nn.LayerNorm, ops.RMSNorm)) and not torch.is_grad_enabled())

    def _decode_logits(self, input_ids, inference_params):
        """logits (B, 1, V) of one decoded token: lm_head(norm_f(hidden + residual)) by norm_linear."""
        hidden_states, residual = self.backbone.forward_layers(input_ids, inference_params)
        norm = self.backbone.norm_f
        logits, _ = norm_linear(hidden_states[:, -1], None if residual is None else residual[:, -1].float(),
                                norm.weight, norm.bias, self.lm_head, is_rms=isinstance(norm, ops.RMSNorm),
                                eps=norm.eps)
        return logits.unsqueeze(1)

    def _logits(self, hidden_states):
        """lm_head of (B, L, d_model); a decode step's few rows through the small-batch kernel (CPU or
        CUDA), and a half-precision prefill's last tokens on the CPU in groups of its batch (each
        group one read of the weights; the product would first widen all 50k rows of them)."""
        if hidden_states.dim() != 3:
            return cpu_matmul.module_linear(self.lm_head, hidden_states)
        rows = hidden_states.flatten(0, 1)
        if rows.shape[0] <= CPU_MAX_BATCH:
            return small_linear(self.lm_head, rows).unflatten(0, hidden_states.shape[:2])
        if (rows.shape[0] > LOGIT_GROUPS * CPU_MAX_BATCH or type(self.lm_head) is not nn.Linear
                or not cpu_matmul.widens(rows, self.lm_head.weight)
                or not norm_gemv._cpu_gemv_ok(rows[:1], self.lm_head.weight, self.lm_head.bias)):
            return cpu_matmul.module_linear(self.lm_head, hidden_states)
        groups = [small_linear(self.lm_head, group) for group in rows.split(CPU_MAX_BATCH)]
        return torch.cat(groups).unflatten(0, hidden_states.shape[:2])

    @classmethod
    def from_pretrained(cls, pretrained_model_name, device=None, dtype=None, process_group=None, **kwargs):
        """Build from a checkpoint directory or hub name (see ssm.utils.weights.load_pretrained);
        with a process_group, a tensor-parallel model holding this rank's shard of the full checkpoint."""
        if process_group is not None:
            return sharding.load_pretrained(cls, pretrained_model_name, process_group, device=device, dtype=dtype,
                                            **kwargs)
        return weights.load_pretrained(cls, pretrained_model_name, device=device, dtype=dtype, **kwargs)

    def save_pretrained(self, save_directory, safe_serialization=True, **kwargs):
        """Write config.json and the weights (see ssm.utils.weights.save_pretrained); a tensor-parallel
        model gathers its shards and writes the full checkpoint from rank 0 (every rank must call it)."""
        if self.process_group is not None:
            return sharding.save_pretrained(self, save_directory, self.process_group,
                                            safe_serialization=safe_serialization, **kwargs)
        return weights.save_pretrained(self, save_directory, safe_serialization=safe_serialization, **kwargs)
