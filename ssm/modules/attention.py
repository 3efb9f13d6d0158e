"""Multi-head attention for hybrid models (``mamba_ssm.modules.mha.MHA``): same constructor,
parameters, KV-cache protocol; attention through ``torch.nn.functional.scaled_dot_product_attention``
and our own rotary embeddings (no flash_attn).

Fixed against the reference (docs/compat.md): the conv state caches the RAW qkv; a query at
position i sees exactly the keys 0..i (bottom-right causal alignment, for one or several new
tokens); cache writes, key lengths and rotary positions follow
``inference_params.lengths_per_sample`` when it is set (CUDA-graph replay)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssm import ops
from ssm.distributed.tensor_parallel import check_divisible, column_linear, row_linear
from ssm.modules import _states
from ssm.modules.rotary import RotaryEmbedding


class MHA(nn.Module):
    def __init__(self, embed_dim, num_heads, num_heads_kv=None, head_dim=None, mlp_dim=0, qkv_proj_bias=True,
                 out_proj_bias=True, softmax_scale=None, causal=False, layer_idx=None, d_conv=0, rotary_emb_dim=0,
                 rotary_emb_base=10000.0, rotary_emb_interleaved=False, device=None, dtype=None,
                 process_group=None, sequence_parallel=True):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.process_group = process_group
        self.sequence_parallel = sequence_parallel
        self.embed_dim = embed_dim
        self.layer_idx = layer_idx
        self.d_conv = d_conv
        self.rotary_emb_dim = rotary_emb_dim
        self.softmax_scale = softmax_scale
        self.causal = causal
        self.num_heads = num_heads
        self.num_heads_kv = num_heads_kv if num_heads_kv is not None else num_heads
        if self.num_heads % self.num_heads_kv:
            raise ValueError(f"num_heads_kv: {self.num_heads_kv} must divide num_heads = {num_heads}")
        if head_dim is None and embed_dim % num_heads:
            raise ValueError(f"num_heads: {num_heads} must divide embed_dim = {embed_dim} (or pass head_dim)")
        self.head_dim = head_dim if head_dim is not None else embed_dim // num_heads
        self.mlp_dim = math.ceil(mlp_dim / 256) * 256
        self._split_heads(process_group)
        qkv_dim = self.head_dim * (self.num_heads + 2 * self.num_heads_kv)
        out_dim = self.head_dim * self.num_heads
        if self.rotary_emb_dim > 0:
            self.rotary_emb = RotaryEmbedding(self.rotary_emb_dim, base=rotary_emb_base,
                                              interleaved=rotary_emb_interleaved, device=device)
        self.in_proj = column_linear(embed_dim, qkv_dim + self.mlp_dim, process_group, sequence_parallel,
                                     bias=qkv_proj_bias, **factory_kwargs)
        if self.d_conv > 0:
            self.conv1d = nn.Conv1d(qkv_dim, qkv_dim, kernel_size=self.d_conv, padding=self.d_conv - 1,
                                    groups=qkv_dim, **factory_kwargs)
        self.out_proj = row_linear(out_dim + self.mlp_dim // 2, embed_dim, process_group, sequence_parallel,
                                   bias=out_proj_bias, **factory_kwargs)

    def _split_heads(self, process_group):
        """Tensor parallelism: this rank's query and key/value heads and MLP channels (whole heads per rank)."""
        check_divisible(process_group, num_heads=self.num_heads, num_heads_kv=self.num_heads_kv,
                        **{"mlp_dim/2": self.mlp_dim // 2})
        world = 1 if process_group is None else process_group.size()
        self.num_heads, self.num_heads_kv, self.mlp_dim = (
            self.num_heads // world, self.num_heads_kv // world, self.mlp_dim // world)

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        """(kv_cache (B, max_seqlen, 2, num_heads_kv, head_dim), conv_state (B, qkv_dim, d_conv) or None).
        Both start as zeros (the reference leaves the kv cache uninitialized)."""
        dtype = self.out_proj.weight.dtype if dtype is None else dtype
        device = self.out_proj.weight.device
        conv_state = None
        if self.d_conv > 0:
            conv_state = torch.zeros(batch_size, self.conv1d.weight.shape[0], self.d_conv, device=device, dtype=dtype)
        kv_cache = torch.zeros(batch_size, max_seqlen, 2, self.num_heads_kv, self.head_dim, dtype=dtype, device=device)
        return kv_cache, conv_state

    def forward(self, x: Tensor, inference_params=None, *, seq_idx: Tensor | None = None,
                cu_seqlens: Tensor | None = None, **kwargs) -> Tensor:
        """x (B, L, embed_dim) -> (B, L, embed_dim). seq_idx (B, L) / cu_seqlens (nseq+1,) (batch 1)
        keep packed sequences apart (attention, conv and rotary positions restart per sequence);
        not with an inference cache. ``context_parallel`` (ssm.distributed.context_parallel): x is one
        rank's slice of a longer sequence. Other keyword arguments (meant for other mixers) are ignored."""
        cp = kwargs.get("context_parallel")
        if cp is not None:
            cp.check(inference_params, seq_idx, cu_seqlens)
        if cu_seqlens is not None and seq_idx is None:
            seq_idx = _states.seq_idx_from_cu_seqlens(cu_seqlens, x.shape[1])
        if inference_params is not None and seq_idx is not None:
            raise ValueError("seq_idx/cu_seqlens: MHA does not take packed sequences with an inference cache")
        if inference_params is not None and self.process_group is not None and self.sequence_parallel:
            raise ValueError("sequence_parallel: decoding with an inference cache needs the input on every rank; "
                             "build the layer with sequence_parallel=False")
        cache = self._cache(inference_params, x) if inference_params is not None else None
        qkv = self.in_proj(x)
        x_mlp = None
        if self.mlp_dim > 0:
            qkv, x_mlp = qkv.split([qkv.shape[-1] - self.mlp_dim, self.mlp_dim], dim=-1)
            up, gate = x_mlp.chunk(2, dim=-1)
            x_mlp = up * F.silu(gate)
        if self.d_conv > 0:
            qkv = self._conv(qkv, cache, seq_idx, cp)
        q, kv = qkv.split([self.num_heads * self.head_dim, self.num_heads_kv * 2 * self.head_dim], dim=-1)
        # q (B, L, H, hd); k, v (B, L, Hkv, hd)
        q = q.unflatten(-1, (self.num_heads, self.head_dim))
        k, v = kv.unflatten(-1, (2, self.num_heads_kv, self.head_dim)).unbind(dim=2)
        if self.rotary_emb_dim > 0:
            positions = _states.positions_in_sequence(seq_idx) if seq_idx is not None else None
            offset = cp.offset(q.shape[1]) if cp is not None else 0 if cache is None else cache["offset"]
            q, k = self.rotary_emb(q, k, offset, positions)
        context = self._attention(q, k, v, cache, seq_idx, cp).flatten(-2)
        if x_mlp is not None:
            context = torch.cat([context, x_mlp], dim=-1)
        return self.out_proj(context)

    def _cache(self, inference_params, x):
        """This layer's cache rows for the batch and the offset of the new tokens (int or (B,) tensor)."""
        if self.layer_idx is None:
            raise ValueError("layer_idx: an MHA layer needs a layer_idx to use an inference cache")
        b0, B = inference_params.batch_size_offset, x.shape[0]
        memory = inference_params.key_value_memory_dict
        if self.layer_idx not in memory:
            rows = max(b0 + B, inference_params.max_batch_size)
            memory[self.layer_idx] = self.allocate_inference_cache(rows, inference_params.max_seqlen, dtype=x.dtype)
        kv_cache, conv_state = memory[self.layer_idx]
        if kv_cache.shape[0] < b0 + B:
            raise ValueError(f"inference_params: the kv cache of layer {self.layer_idx} holds {kv_cache.shape[0]} "
                             f"sequences, rows {b0}..{b0 + B - 1} were asked for")
        # past the prefix, per-row cached lengths (when set) win over the Python int offset
        decoding = inference_params.seqlen_offset > 0
        lengths = inference_params.lengths_per_sample
        offset = lengths[b0:b0 + B] if lengths is not None and decoding else inference_params.seqlen_offset
        return {"kv": kv_cache[b0:b0 + B], "conv": None if conv_state is None else conv_state[b0:b0 + B],
                "offset": offset, "decoding": decoding}

    def _conv(self, qkv, cache, seq_idx, cp=None):
        """Depthwise causal conv (no activation) over qkv (B, L, qkv_dim); the cached state holds raw qkv."""
        conv_state = None if cache is None else cache["conv"]
        decoding = cache is not None and cache["decoding"]
        weight = self.conv1d.weight.squeeze(1)
        if decoding and qkv.shape[1] == 1:
            return ops.causal_conv1d_update(qkv[:, 0], conv_state, weight, self.conv1d.bias, None).unsqueeze(1)
        # x (B, qkv_dim, L)
        x = qkv.transpose(1, 2)
        init = conv_state[..., 1:].to(x.dtype) if decoding and self.d_conv > 1 else None
        init = cp.conv_states(x, self.d_conv - 1) if cp is not None else init
        out = ops.dw_causal_conv(x, weight, self.conv1d.bias, None, seq_idx=seq_idx, initial_states=init)
        if conv_state is not None:
            conv_state.copy_(_states.conv_window(x, self.d_conv, conv_state if decoding else None))
        return out.transpose(1, 2)

    def _attention(self, q, k, v, cache, seq_idx, cp=None):
        """Softmax attention of q (B, L, H, hd) over the new (and cached) keys -> (B, L, H, hd)."""
        mask, is_causal = None, self.causal
        if cp is not None:
            k, v, mask = cp.attention_kv(k, v, self.causal)
            is_causal = False
        elif cache is not None:
            k, v, mask = self._update_kv_cache(k, v, cache)
            is_causal = False
        elif seq_idx is not None:
            mask = (seq_idx[:, :, None] == seq_idx[:, None, :])
            if self.causal:
                mask = mask.tril()
            mask, is_causal = mask[:, None], False
        rep = self.num_heads // self.num_heads_kv
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mask, is_causal=is_causal, scale=self.softmax_scale)
        return out.transpose(1, 2)

    def _update_kv_cache(self, k, v, cache):
        """Write the new k, v (B, L, Hkv, hd) at their positions; return all keys/values to attend
        to and the (B, 1, L, S) mask: query at absolute position p sees keys 0..p (or all written
        keys when not causal)."""
        kv, offset = cache["kv"], cache["offset"]
        B, L = k.shape[:2]
        t = torch.arange(L, device=k.device)
        new = torch.stack([k, v], dim=2).to(kv.dtype)
        if isinstance(offset, Tensor):
            positions = offset[:, None].to(t.dtype) + t  # (B, L)
            kv.index_put_((torch.arange(B, device=k.device)[:, None], positions), new)
            keys = kv
        else:
            if offset + L > kv.shape[1]:
                raise ValueError(f"inference_params: {offset} cached + {L} new tokens exceed max_seqlen {kv.shape[1]}")
            kv[:, offset:offset + L] = new
            keys = kv[:, :offset + L]
            positions = (offset + t)[None]
        key_pos = torch.arange(keys.shape[1], device=k.device)
        last = positions[:, -1:, None] if not self.causal else positions[:, :, None]
        mask = (key_pos <= last)[:, None]
        keys = keys.to(k.dtype)
        return keys[:, :, 0], keys[:, :, 1], mask
