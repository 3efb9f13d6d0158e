"""How one decode turns prompts and new tokens into next-token logits.

A runner has ``prefill(prompts) -> logits (b, V)`` and ``step(tokens (b, 1)) -> logits (b, V)``.
- ``BatchRunner``: prompts of one length; the ``mamba_ssm`` path (optionally a CUDA graph).
- ``StatePassingRunner``: prompts of different lengths in a MambaLMHeadModel-like model (its layers
  follow the whole cache protocol: attention reads per-row lengths from ``lengths_per_sample``).
  Each group of equal-length prompts is prefilled alone (unpadded) into its own cache, whose rows
  are copied into the shared cache; then all rows decode together, ``lengths_per_sample`` holding
  each row's own position. Recurrent states carry no position and KV rows are written at each
  row's own offset, so every row is exactly as if alone.
- ``GroupedRunner``: prompts of different lengths in a model we know nothing about (no
  ``config.attn_layer_idx``): each group of equal-length prompts decodes as its own batch, one step
  at a time in lockstep with the others; only a shared ``seqlen_offset`` is relied upon.
"""
from __future__ import annotations

import warnings

import torch

from ssm.utils.cuda_graph import update_graph_cache
from ssm.utils.inference import InferenceParams
from ssm.utils.prompts import Prompts


class BatchRunner:
    """Prompts of one length; caches in a fresh InferenceParams or in the model's graph cache."""

    def __init__(self, model, batch_size: int, prompt_len: int, max_seqlen: int, cg: bool = False):
        self.model, self.cg = model, cg
        if cg:
            model._decoding_cache = update_graph_cache(
                model, getattr(model, "_decoding_cache", None), batch_size, prompt_len, max_seqlen)
            self.params = model._decoding_cache.inference_params
            self.params.reset(max_seqlen, batch_size)
        else:
            self.params = InferenceParams(max_seqlen=max_seqlen, max_batch_size=batch_size)

    def prefill(self, prompts: Prompts) -> torch.Tensor:
        logits = _last_logits(self.model, prompts.ids, None, self.params)
        self.params.seqlen_offset += prompts.width
        return logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens, position_ids (b, 1)
        position_ids = torch.full_like(tokens, self.params.seqlen_offset)
        if self.cg:
            logits = self.model._decoding_cache.run(tokens, position_ids, self.params.seqlen_offset)[:, -1]
        else:
            logits = _last_logits(self.model, tokens, position_ids, self.params)
        self.params.seqlen_offset += tokens.shape[1]
        return logits


class StatePassingRunner(BatchRunner):
    """Different prompt lengths: per-length prefill, then one shared decode with per-row lengths."""

    def prefill(self, prompts: Prompts) -> torch.Tensor:
        cache = self.params.key_value_memory_dict
        if not cache:
            cache.update(self.model.allocate_inference_cache(prompts.ids.shape[0], self.params.max_seqlen))
        parts = [(rows, self._prefill_alone(prompts.ids[rows, prompts.width - length:], rows))
                 for rows, length in _length_groups(prompts)]
        self.params.seqlen_offset = prompts.width
        lengths = prompts.lengths.to(torch.int32)
        if self.params.lengths_per_sample is None:
            self.params.lengths_per_sample = lengths
        else:
            self.params.lengths_per_sample.copy_(lengths)
        return _scatter_rows(parts, prompts.ids.shape[0])

    def _prefill_alone(self, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Prefill ids (g, L) unpadded in a fresh cache, then copy its states into the shared cache rows."""
        alone = InferenceParams(max_seqlen=self.params.max_seqlen, max_batch_size=ids.shape[0])
        logits = _last_logits(self.model, ids, None, alone)
        _copy_cache_rows(self.params.key_value_memory_dict, alone.key_value_memory_dict, rows)
        return logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        # lengths (b,) int32: each row's cached tokens = the position of its new token
        lengths = self.params.lengths_per_sample
        if self.cg:
            position_ids = lengths[:, None].long()
            logits = self.model._decoding_cache.run(tokens, position_ids, lengths.clone())[:, -1]
        else:
            logits = _last_logits(self.model, tokens, lengths[:, None].long(), self.params)
        self.params.seqlen_offset += tokens.shape[1]
        lengths += tokens.shape[1]
        return logits


class GroupedRunner:
    """Different prompt lengths, unknown model: one BatchRunner per prompt length, in lockstep."""

    def __init__(self, model, prompts: Prompts, max_seqlen: int, cg: bool = False):
        if cg:
            warnings.warn("generate: cg=True is ignored for prompts of different lengths in a model without "
                          "a MambaConfig-like config (each length group decodes eagerly)", stacklevel=4)
        self.groups = [(rows, length, BatchRunner(model, rows.numel(), length, max_seqlen))
                       for rows, length in _length_groups(prompts)]

    def prefill(self, prompts: Prompts) -> torch.Tensor:
        # each group's prompts without their left padding
        parts = [(rows, runner.prefill(Prompts(prompts.ids[rows, prompts.width - length:], None)))
                 for rows, length, runner in self.groups]
        return _scatter_rows(parts, prompts.ids.shape[0])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        parts = [(rows, runner.step(tokens[rows])) for rows, _, runner in self.groups]
        return _scatter_rows(parts, tokens.shape[0])


def make_runner(model, prompts: Prompts, max_seqlen: int, cg: bool):
    """Pick the runner for these prompts and this model (see the module docstring)."""
    batch_size = prompts.ids.shape[0]
    if prompts.lengths is None:
        return BatchRunner(model, batch_size, prompts.width, max_seqlen, cg)
    if _follows_cache_protocol(model):
        return StatePassingRunner(model, batch_size, prompts.width, max_seqlen, cg)
    return GroupedRunner(model, prompts, max_seqlen, cg)


def _follows_cache_protocol(model) -> bool:
    """A MambaLMHeadModel-like config (attention layers, if any, read lengths_per_sample per row)."""
    return hasattr(getattr(model, "config", None), "attn_layer_idx")


def _last_logits(model, ids, position_ids, params) -> torch.Tensor:
    # ids (b, l) -> logits of the last position (b, V)
    out = model(ids, position_ids=position_ids, inference_params=params, num_last_tokens=1)
    return out.logits[:, -1]


def _length_groups(prompts: Prompts):
    """(rows (g,) long, length) for each distinct prompt length, in first-seen order."""
    lengths = prompts.lengths.tolist()
    order = list(dict.fromkeys(lengths))
    device = prompts.ids.device
    return [(torch.tensor([i for i, n in enumerate(lengths) if n == length], device=device), length)
            for length in order]


def _copy_cache_rows(dst: dict, src: dict, rows: torch.Tensor) -> None:
    """Copy every cache tensor of src (batch g) into the given rows of dst (batch b), in place.
    A KV cache of dst may be longer (a CUDA-graph cache sized for an earlier, longer max_length):
    then src fills its prefix."""
    for key, src_states in src.items():
        dst_states = dst[key]
        for d, s in zip(_as_tuple(dst_states), _as_tuple(src_states)):
            if s is not None:
                prefix = tuple(slice(0, n) for n in s.shape[1:])
                d[(rows,) + prefix] = s.to(d.dtype)


def _as_tuple(states):
    return states if isinstance(states, (tuple, list)) else (states,)


def _scatter_rows(parts, batch_size: int) -> torch.Tensor:
    # parts: [(rows (g,), logits (g, V))] -> logits (b, V)
    first = parts[0][1]
    out = first.new_empty((batch_size, first.shape[-1]))
    for rows, logits in parts:
        out[rows] = logits
    return out
