"""Data-parallel training of MambaLMHeadModel: under DDP, FSDP2 (fully_shard per block, then the
root) and DDP with torch.compile, every parameter's gradient equals one process training on the
concatenated global batch (mean loss over the global batch on both sides)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from ssm.models.config import MambaConfig
from ssm.models.lm import MambaLMHeadModel
from tests.distributed import mp

PER_RANK, L, VOCAB = 2, 16, 64
TOL = 5e-5
CONFIGS = {
    "mamba1": dict(d_model=16, n_layer=2, ssm_cfg={"layer": "Mamba1", "d_state": 8}),
    "tiny": dict(d_model=16, n_layer=1, ssm_cfg={"layer": "Mamba1", "d_state": 8}),
    "hybrid": dict(d_model=32, n_layer=2, d_intermediate=32, attn_layer_idx=[1],
                   ssm_cfg={"layer": "Mamba2", "d_state": 8, "headdim": 8, "chunk_size": 8},
                   attn_cfg={"num_heads": 4, "causal": True, "rotary_emb_dim": 4}),
}


def _model(name, device):
    torch.manual_seed(0)
    return MambaLMHeadModel(MambaConfig(vocab_size=VOCAB, **CONFIGS[name])).to(device)


def _loss(model, tokens):
    logits = model(tokens[:, :-1]).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())


def _full_grad(g):
    return g.full_tensor() if hasattr(g, "full_tensor") else g


def _errors(model, ref):
    """{parameter name: relative error of its gradient against ref}."""
    out = {}
    for name, p in model.named_parameters():
        name = name.removeprefix("_orig_mod.").removeprefix("module.")
        g, r = _full_grad(p.grad).detach().double(), ref[name].double()
        out[name] = float((g - r).norm() / r.norm().clamp(min=1e-30))
    return out


def _reference(name, tokens, device):
    model = _model(name, device)
    _loss(model, tokens).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _wrap(kind, model, backend, rank):
    if kind == "fsdp2":
        for block in model.backbone.layers:
            fully_shard(block)
        return fully_shard(model)
    ddp = DDP(model, device_ids=[rank] if backend == "nccl" else None)
    return torch.compile(ddp) if kind == "ddp_compile" else ddp


def _check(rank, world, backend, cases):
    """{(config, wrapper): {parameter: relative gradient error}} on this rank."""
    device = mp.device_for(backend, rank)
    out = {}
    for name, kind in cases:
        gen = torch.Generator().manual_seed(3)
        tokens = torch.randint(0, VOCAB, (world * PER_RANK, L + 1), generator=gen).to(device)
        ref = _reference(name, tokens, device)
        model = _wrap(kind, _model(name, device), backend, rank)
        _loss(model, tokens[rank * PER_RANK:(rank + 1) * PER_RANK]).backward()
        out[(name, kind)] = _errors(model, ref)
    return out


def _assert_small(results, n_cases):
    for rank, per_case in enumerate(results):
        assert len(per_case) == n_cases
        for case, errs in per_case.items():
            assert len(errs) >= 8, case
            bad = {k: v for k, v in errs.items() if not v <= TOL}
            assert not bad, f"rank {rank} {case}: {bad}"


@pytest.mark.parametrize("world, backend", [pytest.param(w, p.values[0], marks=p.marks, id=f"{p.id}-{w}")
                                            for w in (2, 3) for p in mp.backends(w)])
def test_ddp_fsdp2_gradients_match_one_process(world, backend):
    cases = [(name, kind) for name in ("mamba1", "hybrid") for kind in ("ddp", "fsdp2")]
    _assert_small(mp.run_workers(_check, world, cases, backend=backend), len(cases))


@pytest.mark.parametrize("backend", mp.backends(2))
def test_ddp_compile_gradients_match_one_process(backend):
    _assert_small(mp.run_workers(_check, 2, [("tiny", "ddp_compile")], backend=backend), 1)
