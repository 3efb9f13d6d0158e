"""A tiny pure-PyTorch causal LM that follows the inference-cache protocol (COMPAT §3).

It tests the decode loop apart from the real modules: recurrent layers keep fixed-size states
(prev input, running sum), attention layers keep a KV cache indexed by position (per row from
``lengths_per_sample`` when set), and positions enter the attention scores, so a row decoded at the
wrong position gives different logits.
"""
from __future__ import annotations

import math
from collections import namedtuple
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ssm.utils.generation import GenerationMixin

CausalLMOutput = namedtuple("CausalLMOutput", ["logits"])


@dataclass
class ToyConfig:
    vocab_size: int = 37
    d_model: int = 16
    n_layer: int = 2
    attn_layer_idx: list = field(default_factory=list)
    tie_embeddings: bool = False


class ToyRecurrent(nn.Module):
    """h_t = decay * h_{t-1} + tanh(W u_t + V u_{t-1}); out = O h_t. Cache: (prev u (b,d), h (b,d))."""

    def __init__(self, d: int, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.w, self.v, self.o = nn.Linear(d, d), nn.Linear(d, d, bias=False), nn.Linear(d, d)
        self.decay = nn.Parameter(torch.rand(d) * 0.8 + 0.1)

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None):
        w = self.w.weight
        return (torch.zeros(batch_size, w.shape[1], dtype=dtype or w.dtype, device=w.device),
                torch.zeros(batch_size, w.shape[0], dtype=dtype or w.dtype, device=w.device))

    def forward(self, u, inference_params=None):
        # u (b, l, d)
        cache = None
        if inference_params is not None:
            cache = inference_params.key_value_memory_dict.setdefault(
                self.layer_idx, self.allocate_inference_cache(u.shape[0], inference_params.max_seqlen))
        decoding = cache is not None and inference_params.seqlen_offset > 0
        prev = cache[0] if decoding else torch.zeros_like(u[:, 0])
        h = cache[1] if decoding else torch.zeros_like(u[:, 0])
        outs = []
        for t in range(u.shape[1]):
            h = self.decay * h + torch.tanh(self.w(u[:, t]) + self.v(prev))
            prev = u[:, t]
            outs.append(self.o(h))
        if cache is not None:
            cache[0].copy_(prev)
            cache[1].copy_(h)
        return torch.stack(outs, dim=1)


class ToyAttention(nn.Module):
    """One-head causal attention with positions added to q and k. Cache: (kv (b, max_seqlen, 2, d),)."""

    def __init__(self, d: int, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None):
        w = self.o.weight
        return (torch.zeros(batch_size, max_seqlen, 2, w.shape[0], dtype=dtype or w.dtype, device=w.device),)

    def forward(self, x, inference_params=None):
        # x (b, l, d); q, k, v (b, l, d); qpos (b, l): absolute positions of the new tokens
        b, l = x.shape[:2]
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        qpos = _row_offsets(inference_params, b, x.device)[:, None] + torch.arange(l, device=x.device)
        pos = _positions(qpos, x.shape[-1], x)
        q, k = q + pos, k + pos
        if inference_params is not None:
            kv = inference_params.key_value_memory_dict.setdefault(
                self.layer_idx, self.allocate_inference_cache(b, inference_params.max_seqlen))[0]
            kv[torch.arange(b, device=x.device)[:, None], qpos] = torch.stack([k, v], dim=2)
            k, v = kv[:, :, 0], kv[:, :, 1]
        # scores (b, l, S), masked where a key's position is after the query's
        scores = q @ k.transpose(1, 2) / math.sqrt(x.shape[-1])
        kpos = torch.arange(k.shape[1], device=x.device)[None, None, :]
        scores = scores.masked_fill(kpos > qpos[:, :, None], float("-inf"))
        return self.o(scores.softmax(dim=-1) @ v)


def _row_offsets(inference_params, batch_size: int, device) -> torch.Tensor:
    """(b,) cached tokens per row: lengths_per_sample when set (per-row), else seqlen_offset."""
    if inference_params is None:
        return torch.zeros(batch_size, dtype=torch.long, device=device)
    if inference_params.lengths_per_sample is not None:
        return inference_params.lengths_per_sample[:batch_size].long()
    return torch.full((batch_size,), inference_params.seqlen_offset, dtype=torch.long, device=device)


def _positions(qpos: torch.Tensor, d: int, like: torch.Tensor) -> torch.Tensor:
    # (b, l, d) sinusoids of absolute positions qpos (b, l)
    freq = torch.exp(-torch.arange(d, device=like.device, dtype=like.dtype) / d * 4.0)
    return torch.sin(qpos[..., None].to(like.dtype) * freq)


class ToyLM(nn.Module, GenerationMixin):
    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.embedding = nn.Embedding(config.vocab_size, d)
        self.layers = nn.ModuleList(
            ToyAttention(d, i) if i in config.attn_layer_idx else ToyRecurrent(d, i) for i in range(config.n_layer))
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        return {i: layer.allocate_inference_cache(batch_size, max_seqlen, dtype) for i, layer in enumerate(self.layers)}

    def forward(self, input_ids, position_ids=None, inference_params=None, num_last_tokens=0):
        h = self.embedding(input_ids)
        for layer in self.layers:
            h = h + layer(h, inference_params=inference_params)
        if num_last_tokens > 0:
            h = h[:, -num_last_tokens:]
        return CausalLMOutput(logits=self.lm_head(h))
