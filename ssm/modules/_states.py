"""Helpers the mixers share for their inference caches and packed (varlen) batches."""
from __future__ import annotations

import torch
from torch import Tensor


def seq_idx_from_cu_seqlens(cu_seqlens: Tensor, seqlen: int) -> Tensor:
    """(nseq+1,) cumulative lengths -> (1, seqlen) int32 index of the sequence of every token."""
    positions = torch.arange(seqlen, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens[1:].contiguous(), positions, right=True).to(torch.int32)[None]


def positions_in_sequence(seq_idx: Tensor) -> Tensor:
    """(B, L) sequence index -> (B, L) position of each token inside its own packed sequence."""
    B, L = seq_idx.shape
    t = torch.arange(L, device=seq_idx.device).expand(B, L)
    starts = torch.ones_like(seq_idx, dtype=torch.bool)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    first = torch.where(starts, t, torch.zeros_like(t)).cummax(dim=1).values
    return t - first


def conv_window(x: Tensor, width: int, prev: Tensor | None = None) -> Tensor:
    """The last ``width`` raw inputs of x (B, D, L) continuing ``prev`` (B, D, width), or zeros
    before the start when prev is None: what a rolling conv state holds after x."""
    L = x.shape[-1]
    if L >= width:
        return x[..., L - width:]
    head = prev[..., L:].to(x.dtype) if prev is not None else x.new_zeros(x.shape[0], x.shape[1], width - L)
    return torch.cat([head, x], dim=-1)


def varlen_conv_windows(x: Tensor, cu_seqlens: Tensor, width: int) -> Tensor:
    """Packed x (D, T) -> (nseq, D, width): each sequence's last ``width`` inputs, zeros before its start."""
    starts, ends = cu_seqlens[:-1], cu_seqlens[1:]
    # idx (nseq, width): token index of each window column
    idx = ends[:, None] - width + torch.arange(width, device=x.device, dtype=cu_seqlens.dtype)
    valid = idx >= starts[:, None]
    windows = x[:, idx.clamp(min=0)] * valid.to(x.dtype)
    return windows.permute(1, 0, 2)


def layer_states(mixer, inference_params, batch_size: int, initialize_states: bool = False) -> tuple:
    """The mixer's (conv_state, ssm_state) rows in ``inference_params``, allocated on first use with
    ``mixer.allocate_inference_cache``; zeroed when ``initialize_states``."""
    if mixer.layer_idx is None:
        raise ValueError(f"layer_idx: a {type(mixer).__name__} layer needs a layer_idx to use an inference cache")
    cache = inference_params.key_value_memory_dict
    if mixer.layer_idx not in cache:
        cache[mixer.layer_idx] = mixer.allocate_inference_cache(batch_size, inference_params.max_seqlen)
    states = cache_rows(cache[mixer.layer_idx], batch_size, mixer.layer_idx)
    if initialize_states:
        for state in states:
            state.zero_()
    return states


def cache_rows(states: tuple, batch_size: int, layer_idx) -> tuple:
    """The first ``batch_size`` rows of cached states (views, so in-place updates reach the cache)."""
    have = states[0].shape[0]
    if have < batch_size:
        raise ValueError(f"inference cache of layer {layer_idx} holds {have} sequences but the input has "
                         f"{batch_size}; allocate the cache with max_batch_size >= {batch_size}")
    return tuple(s if s is None or have == batch_size else s[:batch_size] for s in states)


def decode_A(mixer) -> Tensor:
    """-exp(mixer.A_log) in float32 for forward and step(); without autograd it is kept until A_log
    changes (in-place updates bump its version, .to() moves its data), not recomputed per call. An
    inference tensor (a model built under torch.inference_mode) has no version: computed per call, as
    under torch.compile (which cannot trace is_inference; the graph computes it)."""
    A_log = mixer.A_log
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and A_log.requires_grad) or A_log.is_inference():
        return -torch.exp(A_log.float())
    key = (A_log.data_ptr(), A_log._version, A_log.dtype, A_log.device)
    cached = mixer.__dict__.get("_decode_A_cache")
    if cached is None or cached[0] is not A_log or cached[1] != key:
        cached = (A_log, key, -torch.exp(A_log.detach().float()))
        mixer.__dict__["_decode_A_cache"] = cached
    return cached[2]
