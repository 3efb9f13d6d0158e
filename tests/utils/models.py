"""Tiny models for the generation and checkpoint tests: the toy LM, and real MambaLMHeadModels."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.utils.toy_lm import ToyConfig, ToyLM

# ops the real LM needs; they arrive on main from other branches
LM_OPS = ("RMSNorm", "RMSNormGated", "layer_norm_fn", "mamba_inner_fn", "selective_state_update",
          "mamba_chunk_scan_combined", "causal_conv1d_fn", "causal_conv1d_update")


def lm_missing_reason() -> str | None:
    """Why MambaLMHeadModel cannot run in this checkout (ops not merged yet), or None."""
    try:
        import ssm.ops as ops
        import ssm.models  # noqa: F401
    except ImportError as error:
        return f"ssm.models cannot be imported here: {error}"
    missing = [name for name in LM_OPS if not hasattr(ops, name)]
    return f"ssm.ops lacks {missing} in this checkout" if missing else None


needs_lm = pytest.mark.skipif(lm_missing_reason() is not None, reason=str(lm_missing_reason()))

LM_CONFIGS = {
    "mamba1": dict(d_model=32, n_layer=2, vocab_size=61, ssm_cfg={"d_state": 8}),
    "mamba2": dict(d_model=32, n_layer=2, vocab_size=61,
                   ssm_cfg={"layer": "Mamba2", "d_state": 16, "headdim": 16, "chunk_size": 8}),
    "hybrid": dict(d_model=32, n_layer=3, vocab_size=61,
                   ssm_cfg={"layer": "Mamba2", "d_state": 16, "headdim": 16, "chunk_size": 8},
                   attn_layer_idx=[1], attn_cfg={"num_heads": 4, "causal": True, "rotary_emb_dim": 8}),
}


def real_lm(kind: str, **overrides) -> torch.nn.Module:
    from ssm.models.config import MambaConfig
    from ssm.models.lm import MambaLMHeadModel
    config = MambaConfig(**{**LM_CONFIGS[kind], **overrides})
    return MambaLMHeadModel(config).eval()


def toy_lm(kind: str) -> torch.nn.Module:
    """toy: recurrent layers; toy-hybrid: with attention; toy-opaque: the hybrid with a config that
    does not say which layers are attention (generation must not assume the cache protocol)."""
    attn = {"toy": [], "toy-hybrid": [1], "toy-opaque": [1]}[kind]
    model = ToyLM(ToyConfig(n_layer=3, attn_layer_idx=attn)).eval()
    if kind == "toy-opaque":
        model.config = SimpleNamespace(vocab_size=model.config.vocab_size)
    return model


TOY_KINDS = ["toy", "toy-hybrid", "toy-opaque"]
LM_KINDS = [pytest.param(k, marks=needs_lm) for k in LM_CONFIGS]
ALL_KINDS = TOY_KINDS + LM_KINDS


def build(kind: str) -> torch.nn.Module:
    return toy_lm(kind) if kind.startswith("toy") else real_lm(kind)


def vocab_of(model) -> int:
    return model.lm_head.weight.shape[0]
