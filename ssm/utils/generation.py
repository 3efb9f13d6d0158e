"""Autoregressive decoding: ``decode``, ``GenerationMixin.generate`` (``mamba_ssm.utils.generation``).

Behaviour is ``mamba_ssm``'s (COMPAT §3) with these additions and fixes:
- rows that emit EOS stop there (their later tokens are EOS) while the others go on;
- prompts of different lengths: a list of 1-d tensors, or ``attention_mask`` with left padding.
  Every row gets the same number of new tokens, ``max_length - P`` (P = longest prompt; at least one),
  and exactly the tokens it would get generating alone (docs/generation.md says how);
- ``min_p`` keeps tokens with probability >= min_p x the row's top probability, any batch size;
- ``cg=True`` is accepted and ignored on CPU; no ``torch.cuda.Event`` is ever created.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Optional

import torch

from ssm.utils.cuda_graph import DecodingCGCache, capture_graph, update_graph_cache
from ssm.utils.decode_runners import make_runner
from ssm.utils.inference import InferenceParams
from ssm.utils.prompts import Prompts, prepare_prompts
from ssm.utils.sampling import (
    modify_logit_for_repetition_penalty,
    modify_logits_for_min_p_filtering,
    modify_logits_for_top_k_filtering,
    modify_logits_for_top_p_filtering,
    sample,
)

__all__ = [
    "InferenceParams", "DecodingCGCache", "update_graph_cache", "capture_graph", "decode", "sample",
    "GenerationMixin", "GenerateDecoderOnlyOutput", "modify_logit_for_repetition_penalty",
    "modify_logits_for_top_k_filtering", "modify_logits_for_top_p_filtering",
    "modify_logits_for_min_p_filtering",
]


@dataclass
class GenerateDecoderOnlyOutput:
    """Stand-in for transformers' class of the same name when transformers is not installed."""

    sequences: torch.Tensor
    scores: Optional[tuple] = None
    logits: Optional[tuple] = None
    attentions: Optional[tuple] = None
    hidden_states: Optional[tuple] = None
    past_key_values: Optional[object] = None


@functools.lru_cache(maxsize=None)
def _output_class():
    """transformers' GenerateDecoderOnlyOutput when importable (what mamba_ssm returns), else ours."""
    try:
        from transformers.generation import GenerateDecoderOnlyOutput as hf_output
    except Exception:
        return GenerateDecoderOnlyOutput
    return hf_output


@dataclass
class _Sampling:
    top_k: int
    top_p: float
    min_p: float
    temperature: float
    repetition_penalty: float


class _EosTracker:
    """Rows that emitted an EOS id; their later tokens are forced to the first EOS id."""

    def __init__(self, eos_token_id, batch_size: int, device):
        ids = [] if eos_token_id is None else (
            [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
        self.ids = torch.tensor(ids, dtype=torch.long, device=device)
        self.done = torch.zeros(batch_size, dtype=torch.bool, device=device)

    def apply(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens, done (b,)
        if self.ids.numel() == 0:
            return tokens
        tokens = torch.where(self.done, self.ids[0], tokens)
        self.done |= torch.isin(tokens, self.ids)
        return tokens

    def all_done(self) -> bool:
        return self.ids.numel() > 0 and bool(self.done.all())


class _Timer:
    """Wall time of the whole decode (synchronizing the GPU when the model is on one)."""

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled, self.cuda = enabled, device.type == "cuda"
        self.start = self._now() if enabled else 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def report(self) -> None:
        if self.enabled:
            print(f"Prompt processing + decoding time: {(self._now() - self.start) * 1000:.0f}ms")


def _model_device(model, fallback: torch.device) -> torch.device:
    param = next(iter(model.parameters()), None)
    return fallback if param is None else param.device


def _pad_id(pad_token_id, eos_token_id) -> int:
    if pad_token_id is not None:
        return pad_token_id
    if eos_token_id is None:
        return 0
    return eos_token_id if isinstance(eos_token_id, int) else list(eos_token_id)[0]


class _DecodeLoop:
    """One call of ``decode``: prefill, then sample / stop / step until done."""

    def __init__(self, model, prompts: Prompts, max_length: int, sampling: _Sampling, eos_token_id,
                 teacher_outputs, vocab_size, output_scores: bool, streamer):
        self.model, self.prompts, self.max_length = model, prompts, max_length
        self.sampling, self.teacher_outputs, self.vocab_size = sampling, teacher_outputs, vocab_size
        self.streamer = streamer
        self.eos = _EosTracker(eos_token_id, prompts.ids.shape[0], prompts.ids.device)
        self.scores = [] if output_scores else None
        self.tokens: list[torch.Tensor] = []
        self.seen = prompts.penalty_ids() if sampling.repetition_penalty != 1.0 else None

    def run(self, runner) -> torch.Tensor:
        """All new tokens (b, n)."""
        if self.streamer is not None:
            self.streamer.put(self.prompts.ids.cpu())
        logits = runner.prefill(self.prompts)
        while True:
            tokens = self._next_tokens(logits)
            self.tokens.append(tokens)
            if self.streamer is not None:
                self.streamer.put(tokens[:, None].cpu())
            if self._should_stop():
                break
            logits = runner.step(tokens[:, None])
        if self.streamer is not None:
            self.streamer.end()
        return torch.stack(self.tokens, dim=1)

    def _should_stop(self) -> bool:
        # the reference's rule: stop once prompt + new tokens reach max_length, or every row hit EOS
        return self.prompts.width + len(self.tokens) >= self.max_length or self.eos.all_done()

    def _next_tokens(self, logits: torch.Tensor) -> torch.Tensor:
        # logits (b, V) -> tokens (b,)
        if self.vocab_size is not None:
            logits = logits[..., : self.vocab_size]
        if self.scores is not None:
            self.scores.append(logits.clone())
        position = self.prompts.width + len(self.tokens)
        if self.teacher_outputs is not None and self.teacher_outputs.shape[1] > position:
            tokens = self.teacher_outputs[:, position].to(logits.device)
        else:
            tokens = self._sample(logits)
        tokens = self.eos.apply(tokens)
        if self.seen is not None:
            self.seen = torch.cat([self.seen, tokens[:, None]], dim=1)
        return tokens

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        s = self.sampling
        if self.seen is not None:
            logits = modify_logit_for_repetition_penalty(logits.clone(), self.seen, s.repetition_penalty)
        return sample(logits, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p, temperature=s.temperature)


def decode(input_ids, model, max_length, top_k=1, top_p=0.0, min_p=0.0, temperature=1.0,
           repetition_penalty=1.0, eos_token_id=None, teacher_outputs=None, vocab_size=None,
           cg=False, enable_timing=False, output_scores=False, streamer=None, attention_mask=None,
           pad_token_id=None):
    """Generate until ``max_length`` total tokens (or every row emitted EOS); see the module docstring.

    input_ids: (b, L) long, or a list of 1-d prompts; attention_mask: (b, L) left padding.
    Returns GenerateDecoderOnlyOutput(sequences (b, P + n) long, scores tuple of n (b, V') or None).
    """
    prompts = prepare_prompts(input_ids, attention_mask, _pad_id(pad_token_id, eos_token_id))
    device = _model_device(model, prompts.ids.device)
    sampling = _Sampling(top_k, top_p, min_p, temperature, repetition_penalty)
    loop = _DecodeLoop(model, prompts, max_length, sampling, eos_token_id, teacher_outputs, vocab_size,
                       output_scores, streamer)
    with torch.inference_mode():
        timer = _Timer(enable_timing, device)
        max_seqlen = max(max_length, prompts.width + 1)
        runner = make_runner(model, prompts, max_seqlen, cg and device.type == "cuda")
        new_tokens = loop.run(runner)
        timer.report()
    sequences = torch.cat([prompts.ids, new_tokens.to(prompts.ids.device)], dim=1)
    scores = tuple(loop.scores) if output_scores else None
    return _output_class()(sequences=sequences, scores=scores)


class GenerationMixin:
    """Adds ``generate`` to a causal LM that follows the inference-cache protocol."""

    def generate(self, input_ids, max_length, top_k=1, top_p=0.0, min_p=0.0, temperature=1.0,
                 return_dict_in_generate=False, output_scores=False, **kwargs):
        """kwargs: repetition_penalty, eos_token_id, teacher_outputs, vocab_size, cg, enable_timing,
        streamer, attention_mask, pad_token_id (anything else is a TypeError)."""
        output = decode(input_ids, self, max_length, top_k=top_k, top_p=top_p, min_p=min_p,
                        temperature=temperature, output_scores=output_scores, **kwargs)
        return output if return_dict_in_generate else output.sequences
