"""CUDA graphs of the decode step (``mamba_ssm.utils.generation`` names).

The decode step of every layer is capturable: no host syncs, caches mutated in place, attention
lengths read from ``inference_params.lengths_per_sample``. Prefill runs eagerly on the very tensors
the graph captured, so one graph serves every later decode of the same batch size.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ssm.utils.inference import InferenceParams


@dataclass
class DecodingCGCache:
    """Captured decode graphs keyed by (batch_size, decoding_seqlen), and the caches they use."""

    max_batch_size: int = 0
    max_seqlen: int = 0
    device = None
    dtype = None
    callables: dict = field(default_factory=dict)
    mempool = None
    inference_params: Optional[InferenceParams] = None
    run: Optional[Callable] = None


def _needs_new_caches(cache: DecodingCGCache, device, dtype, batch_size: int, max_seqlen: int) -> bool:
    # A different batch size also reallocates: layers copy prefill states into the whole cache.
    return ((device, dtype) != (cache.device, cache.dtype) or batch_size != cache.max_batch_size
            or max_seqlen > cache.max_seqlen)


@torch.inference_mode()
def update_graph_cache(model, cache, batch_size, seqlen_og, max_seqlen, decoding_seqlens=(1,),
                       dtype=None, n_warmups=2):
    """Return ``cache`` (or a new one) holding caches and graphs for this batch size and length."""
    cache = DecodingCGCache() if cache is None else cache
    param = next(iter(model.parameters()))
    device, dtype = param.device, (param.dtype if dtype is None else dtype)
    if _needs_new_caches(cache, device, dtype, batch_size, max_seqlen):
        cache.callables, cache.mempool, cache.inference_params = {}, None, None
        gc.collect()
        cache.device, cache.dtype = device, dtype
        cache.max_batch_size, cache.max_seqlen = batch_size, max_seqlen
        lengths = torch.full((batch_size,), seqlen_og, dtype=torch.int32, device=device)
        cache.inference_params = InferenceParams(
            max_seqlen=max_seqlen, max_batch_size=batch_size, seqlen_offset=seqlen_og,
            key_value_memory_dict=model.allocate_inference_cache(batch_size, max_seqlen, dtype),
            lengths_per_sample=lengths)
        cache.mempool = torch.cuda.graphs.graph_pool_handle()
    for decoding_seqlen in decoding_seqlens:
        if (batch_size, decoding_seqlen) not in cache.callables:
            cache.callables[batch_size, decoding_seqlen] = capture_graph(
                model, cache.inference_params, batch_size, max_seqlen, decoding_seqlen=decoding_seqlen,
                mempool=cache.mempool, n_warmups=n_warmups)

    def dispatch(input_ids, position_ids, seqlen):
        batch, decoding_seqlen = input_ids.shape[:2]
        return cache.callables[batch, decoding_seqlen](input_ids, position_ids, seqlen)

    cache.run = dispatch
    cache.inference_params.seqlen_offset = 0
    return cache


def capture_graph(model, inference_params, batch_size, max_seqlen, decoding_seqlen=1, mempool=None,
                  n_warmups=2):
    """Capture one decode forward; returns ``run(input_ids, position_ids, seqlen) -> logits``."""
    device = next(iter(model.parameters())).device
    # input_ids, position_ids (b, decoding_seqlen): static buffers the graph reads
    input_ids = torch.zeros((batch_size, decoding_seqlen), dtype=torch.long, device=device)
    position_ids = torch.zeros((batch_size, decoding_seqlen), dtype=torch.long, device=device)
    offset_before = inference_params.seqlen_offset
    inference_params.seqlen_offset = max_seqlen - decoding_seqlen
    inference_params.lengths_per_sample[:] = inference_params.seqlen_offset

    def forward():
        return model(input_ids, position_ids=position_ids, inference_params=inference_params,
                     num_last_tokens=decoding_seqlen).logits

    _warm_up(forward, n_warmups)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=mempool):
        logits = forward()
    inference_params.seqlen_offset = offset_before

    def run(new_input_ids, new_position_ids, seqlen):
        inference_params.lengths_per_sample[:] = seqlen
        input_ids.copy_(new_input_ids)
        position_ids.copy_(new_position_ids)
        graph.replay()
        return logits.clone()

    return run


def _warm_up(forward, n_warmups: int) -> None:
    """Run the forward on a side stream first (allocator and lazy initialisation settle there)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(n_warmups):
            forward()
        side.synchronize()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
    torch.cuda.current_stream().wait_stream(side)
