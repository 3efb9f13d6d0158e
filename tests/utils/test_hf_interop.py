"""Peer check against transformers' MambaForCausalLM / Mamba2ForCausalLM (CPU, float32, tiny configs).

A checkpoint saved by transformers loads into ssm and gives transformers' logits, and an ssm model
exported with save_hf loads into transformers and gives ssm's logits.
"""
import pytest
import torch

from ssm.utils.weights import save_hf
from tests.utils.models import needs_lm, real_lm

transformers = pytest.importorskip("transformers")

pytestmark = needs_lm

HF_CONFIGS = {
    "mamba": lambda: transformers.MambaConfig(
        vocab_size=61, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4,
        use_bias=True, use_conv_bias=True, tie_word_embeddings=True),
    "mamba2": lambda: transformers.Mamba2Config(
        vocab_size=61, hidden_size=32, state_size=16, num_hidden_layers=2, expand=2, num_heads=4, head_dim=16,
        n_groups=2, chunk_size=8, conv_kernel=4, tie_word_embeddings=False),
}
HF_CLASSES = {"mamba": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM"}


def perturb(model):
    """Random weights everywhere (inits leave ones / zeros that would hide a swapped tensor)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.mark.parametrize("model_type", ["mamba", "mamba2"])
def test_transformers_checkpoint_loads_with_same_logits(tmp_path, model_type):
    from ssm.models.lm import MambaLMHeadModel
    hf = perturb(getattr(transformers, HF_CLASSES[model_type])(HF_CONFIGS[model_type]()))
    hf.save_pretrained(tmp_path)
    ours = MambaLMHeadModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 61, (2, 13))
    with torch.no_grad():
        expected = hf(ids).logits
        actual = ours(ids).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind,hf_class", [("mamba1", "MambaForCausalLM"), ("mamba2", "Mamba2ForCausalLM")])
@pytest.mark.parametrize("tie", [True, False])
def test_export_to_transformers_gives_same_logits(tmp_path, kind, hf_class, tie):
    ssm_cfg = {"d_state": 8, "bias": True} if kind == "mamba1" else {
        "layer": "Mamba2", "d_state": 16, "headdim": 16, "ngroups": 2, "chunk_size": 8}
    ours = perturb(real_lm(kind, ssm_cfg=ssm_cfg, tie_embeddings=tie))
    save_hf(ours, tmp_path)
    hf = getattr(transformers, hf_class).from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 61, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids).logits, rtol=1e-4, atol=1e-4)


def test_export_refuses_what_transformers_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="attn_layer_idx"):
        save_hf(real_lm("hybrid"), tmp_path)
