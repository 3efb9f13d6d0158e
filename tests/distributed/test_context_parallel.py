"""Context parallelism (ssm.distributed.context_parallel): a sequence split along L across ranks
gives the forward, the input gradients and the parameter gradients of one process running the
whole sequence, for Mamba-1, Mamba-2 and a hybrid LM with attention, with both schedules."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssm.distributed import context_parallel as cpm
from ssm.models.config import MambaConfig
from ssm.models.lm import MambaLMHeadModel
from ssm.modules.attention import MHA
from ssm.modules.mamba1 import Mamba1
from ssm.modules.mamba2 import Mamba2
from tests.distributed import mp

B, L = 2, 24  # L divisible by 2 and 3; slices of 12 / 8 tokens
TOL = 1e-5


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def _grads(module):
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def _mixer(kind):
    torch.manual_seed(0)
    if kind == "mamba1":
        return Mamba1(16, d_state=8, d_conv=4, layer_idx=0)
    return Mamba2(32, d_state=8, d_conv=4, headdim=8, chunk_size=8, layer_idx=0)


def _hybrid():
    torch.manual_seed(0)
    config = MambaConfig(d_model=32, n_layer=3, d_intermediate=32, vocab_size=64,
                         ssm_cfg={"layer": "Mamba2", "d_state": 8, "headdim": 8, "chunk_size": 8},
                         attn_layer_idx=[1], attn_cfg={"num_heads": 4, "causal": True, "rotary_emb_dim": 4,
                                                      "d_conv": 4})
    return MambaLMHeadModel(config)


def _mixer_errors(kind, cp, device):
    """Errors of output, input gradient and parameter gradients of the context-parallel run."""
    module = _mixer(kind).to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, L, module.d_model, generator=gen).to(device).requires_grad_()
    g = torch.randn(B, L, module.d_model, generator=gen).to(device)
    out = module(x)
    out.backward(g)
    ref = (out.detach(), x.grad.detach(), _grads(module))
    module.zero_grad(set_to_none=True)
    x_local = cp.split(x.detach()).requires_grad_()
    out_local = module(x_local, context_parallel=cp)
    out_local.backward(cp.split(g))
    cpm.reduce_gradients(module, cp.group)
    grads = _grads(module)
    errs = {"out": _rel(out_local.detach(), cp.split(ref[0])), "dx": _rel(x_local.grad, cp.split(ref[1]))}
    errs.update({f"d{n}": _rel(grads[n], ref[2][n]) for n in ref[2]})
    return errs


def _lm_loss(model, ids, targets, total, **kwargs):
    logits = model(ids, **kwargs).logits
    return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum") / total


def _hybrid_errors(cp, device):
    model = _hybrid().to(device)
    tokens = torch.randint(0, 64, (B, L + 1), generator=torch.Generator().manual_seed(2)).to(device)
    ids, targets = tokens[:, :-1], tokens[:, 1:]
    logits, loss = _lm_loss(model, ids, targets, ids.numel())
    loss.backward()
    ref = (logits.detach(), _grads(model))
    model.zero_grad(set_to_none=True)
    logits_local, loss_local = _lm_loss(model, cp.split(ids), cp.split(targets), ids.numel(), context_parallel=cp)
    loss_local.backward()
    cpm.reduce_gradients(model, cp.group)
    grads = _grads(model)
    errs = {"logits": _rel(logits_local.detach(), cp.split(ref[0]))}
    errs.update({f"d{n}": _rel(grads[n], ref[1][n]) for n in ref[1]})
    return errs


def _check_all(rank, world, backend):
    """{(case, schedule): {quantity: relative error}} on this rank."""
    device = mp.device_for(backend, rank)
    out = {}
    for schedule in cpm.SCHEDULES:
        cp = cpm.ContextParallel(schedule=schedule)
        for kind in ("mamba1", "mamba2"):
            out[(kind, schedule)] = _mixer_errors(kind, cp, device)
        out[("hybrid", schedule)] = _hybrid_errors(cp, device)
    gathered = cpm.ContextParallel().gather(torch.arange(3, device=device)[None] + 3 * rank)
    out[("gather", "-")] = {"order": float((gathered.cpu() != torch.arange(3 * world)[None]).sum())}
    return out


def _worlds_backends(worlds):
    return [pytest.param(w, p.values[0], marks=p.marks, id=f"{p.id}-{w}") for w in worlds for p in mp.backends(w)]


@pytest.mark.parametrize("world, backend", _worlds_backends((2, 3)))
def test_context_parallel_matches_one_process(world, backend):
    results = mp.run_workers(_check_all, world, backend=backend)
    assert len(results[0]) == 7
    for rank, errors in enumerate(results):
        for case, errs in errors.items():
            assert len(errs) > 1 or case[0] == "gather"
            bad = {k: v for k, v in errs.items() if not v <= TOL}
            assert not bad, f"rank {rank} {case}: {bad}"


def test_bad_arguments():
    """Validation that needs no process group."""
    cp = cpm.ContextParallel.__new__(cpm.ContextParallel)
    cp.rank, cp.world = 0, 2
    with pytest.raises(ValueError, match="divisible"):
        cp.split(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="context_parallel"):
        cp.check(seq_idx=torch.zeros(1, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="shorter"):
        cp.conv_states(torch.zeros(1, 2, 2), 3)
    seq_idx = torch.zeros(1, 8, dtype=torch.int32)
    for mixer in (_mixer("mamba1"), _mixer("mamba2"), MHA(16, 2, causal=True)):
        with pytest.raises(ValueError, match="context_parallel"):
            mixer(torch.randn(1, 8, mixer.in_proj.in_features), context_parallel=cp, seq_idx=seq_idx)
    with pytest.raises(ValueError, match="schedule"):
        cpm.ContextParallel(group=object(), schedule="ring")
