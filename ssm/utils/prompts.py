"""Prompts of one batch, uniform or of different lengths, in one left-padded layout."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch


@dataclass
class Prompts:
    """ids (b, P) left-padded long; lengths (b,) long on the ids' device, or None when all are P."""

    ids: torch.Tensor
    lengths: Optional[torch.Tensor]

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    def penalty_ids(self) -> torch.Tensor:
        """ids with each pad replaced by its row's first real token (a repeat does not change a penalty)."""
        if self.lengths is None:
            return self.ids
        # first (b, 1): the first real token of each row; pad (b, P): True on left padding
        first = self.ids.gather(1, (self.width - self.lengths)[:, None])
        pad = torch.arange(self.width, device=self.ids.device)[None, :] < (self.width - self.lengths)[:, None]
        return torch.where(pad, first, self.ids)


PromptInput = Union[torch.Tensor, Sequence[torch.Tensor]]


def prepare_prompts(input_ids: PromptInput, attention_mask: Optional[torch.Tensor] = None,
                    pad_token_id: int = 0) -> Prompts:
    """Accept (b, L) ids [+ a left-padding attention_mask (b, L)] or a list of 1-d prompts."""
    if isinstance(input_ids, (list, tuple)):
        if attention_mask is not None:
            raise ValueError("attention_mask: not accepted with a list of prompts (their lengths say it)")
        return _from_list(input_ids, pad_token_id)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected a (batch, seqlen) tensor or a list of 1-d tensors, "
                         f"got {_describe(input_ids)}")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids: the prompt is empty (seqlen 0); give at least one token")
    if attention_mask is None:
        return Prompts(input_ids, None)
    return _from_mask(input_ids, attention_mask)


def _describe(x) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def _from_list(prompts: Sequence[torch.Tensor], pad_token_id: int) -> Prompts:
    if len(prompts) == 0:
        raise ValueError("input_ids: the list of prompts is empty")
    for i, p in enumerate(prompts):
        if not isinstance(p, torch.Tensor) or p.dim() != 1 or p.numel() == 0:
            raise ValueError(f"input_ids[{i}]: expected a non-empty 1-d tensor, got {_describe(p)}")
    width = max(p.numel() for p in prompts)
    device = prompts[0].device
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, width - p.numel():] = p.to(device)
    lengths = torch.tensor([p.numel() for p in prompts], dtype=torch.long, device=device)
    return Prompts(ids, None if bool((lengths == width).all()) else lengths)


def _from_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Prompts:
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask: expected shape {tuple(input_ids.shape)} like input_ids, "
                         f"got {tuple(attention_mask.shape)}")
    # mask (b, L) in {0, 1}; left padding means each row is 0...0 1...1
    mask = attention_mask.to(device=input_ids.device, dtype=torch.long)
    if bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("attention_mask: values must be 0 or 1")
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError("attention_mask: a row has no real token; every prompt needs at least one")
    if bool((mask.diff(dim=1) < 0).any()):
        raise ValueError("attention_mask: only LEFT padding is supported (each row must read 0...0 1...1)")
    width = input_ids.shape[1]
    return Prompts(input_ids, None if bool((lengths == width).all()) else lengths)
