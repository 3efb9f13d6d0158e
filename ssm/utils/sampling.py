"""Logit processors and token sampling for the decode loop (``mamba_ssm.utils.generation`` names).

Every processor works in place on logits of shape (batch, vocab). ``min_p`` is the fixed form of the
reference's: a token is kept when its probability is at least ``min_p`` times the largest probability
of its own row, for any batch size (COMPAT §7.4).
"""
from __future__ import annotations

import torch


def modify_logits_for_top_k_filtering(logits: torch.Tensor, top_k: int) -> None:
    """Set every logit below the row's k-th largest to -inf (in place)."""
    # logits (b, V); kth (b, 1)
    kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
    logits.masked_fill_(logits < kth, float("-inf"))


def modify_logits_for_top_p_filtering(logits: torch.Tensor, top_p: float) -> None:
    """Nucleus filtering: keep the smallest set of top tokens whose probability sums past top_p."""
    if top_p <= 0.0 or top_p >= 1.0:
        return
    # ascending order: the tokens whose cumulative mass stays within 1 - top_p are the tail to drop
    ascending, order = torch.sort(logits, dim=-1, descending=False)
    tail_mass = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = tail_mass <= (1.0 - top_p)
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    logits.masked_fill_(drop, float("-inf"))


def modify_logits_for_min_p_filtering(logits: torch.Tensor, min_p: float) -> None:
    """Keep tokens whose probability is >= min_p x the row's top probability (in place, per row)."""
    if min_p <= 0.0:
        return
    if min_p > 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")
    # probs (b, V); floor (b, 1)
    probs = torch.softmax(logits.float(), dim=-1)
    floor = probs.amax(dim=-1, keepdim=True) * min_p
    logits.masked_fill_(probs < floor, float("-inf"))


def modify_logit_for_repetition_penalty(logits: torch.Tensor, prev_output_tokens: torch.Tensor,
                                        penalty: float = 1.0) -> torch.Tensor:
    """CTRL repetition penalty on every token seen so far: negative logits x penalty, others / penalty."""
    if penalty == 1.0:
        return logits
    # logits (b, V); prev_output_tokens (b, T) (duplicates are harmless: same value scattered twice)
    seen = torch.gather(logits, 1, prev_output_tokens)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    logits.scatter_(1, prev_output_tokens, seen)
    return logits


def sample(logits: torch.Tensor, top_k: int = 1, top_p: float = 0.0, min_p: float = 0.0,
           temperature: float = 1.0) -> torch.Tensor:
    """One token id per row (b,) from logits (b, V): greedy when top_k == 1, else filtered sampling.

    Filters apply in the reference's order: top-k, then min-p on the untempered distribution, then
    temperature, then top-p. min_p applies with or without top_k (the reference ignored it with top_k).
    """
    if top_k == 1:
        return logits.argmax(dim=-1)
    if top_p > 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {top_p}")
    if top_k > 0:
        # vals, idx (b, k)
        vals, idx = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1)
        picked = _sample_filtered(vals, top_p, min_p, temperature)
        return idx.gather(-1, picked[:, None]).squeeze(-1)
    return _sample_filtered(logits.clone(), top_p, min_p, temperature)


def _sample_filtered(logits: torch.Tensor, top_p: float, min_p: float, temperature: float) -> torch.Tensor:
    """Filter a private copy of logits (b, V') in place and draw one index per row."""
    modify_logits_for_min_p_filtering(logits, min_p)
    if temperature != 1.0:
        logits.div_(temperature)
    modify_logits_for_top_p_filtering(logits, top_p)
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, num_samples=1).squeeze(-1)
