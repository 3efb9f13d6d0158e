import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from functools import partial

from ssm import ops
from ssm.modules import Block, GatedMLP, Mamba1
from tests.modules.helpers import assert_close, grads_everywhere

D = 24


def test_gated_mlp_sizes_and_math():
    mlp = GatedMLP(48)
    assert mlp.fc1.weight.shape == (2 * 128, 48) and mlp.fc2.weight.shape == (48, 128)  # int(8*48/3)=128
    assert GatedMLP(30, hidden_features=100, out_features=7, multiple_of=64).fc2.weight.shape == (7, 128)
    mlp = GatedMLP(D, hidden_features=40, multiple_of=8, bias=True, activation=F.gelu)
    x = torch.randn(3, 5, D)
    h = mlp.fc1(x)
    assert_close(mlp(x), mlp.fc2(h[..., :40] * F.gelu(h[..., 40:])))
    assert list(mlp.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


def _block(norm, fused, residual_in_fp32, with_mlp):
    norm_cls = partial(ops.RMSNorm if norm == "rms" else nn.LayerNorm, eps=1e-5)
    mlp_cls = partial(GatedMLP, hidden_features=32) if with_mlp else nn.Identity
    return Block(D, partial(Mamba1, d_state=4, layer_idx=0), mlp_cls, norm_cls=norm_cls, fused_add_norm=fused,
                 residual_in_fp32=residual_in_fp32)


@pytest.mark.parametrize("norm", ["rms", "layer"])
@pytest.mark.parametrize("with_mlp", [False, True])
def test_fused_add_norm_matches_unfused(norm, with_mlp):
    fused = _block(norm, True, True, with_mlp)
    unfused = _block(norm, False, True, with_mlp)
    unfused.load_state_dict(fused.state_dict())
    x, res = torch.randn(2, 6, D), torch.randn(2, 6, D)
    for residual in (None, res):
        h1, r1 = fused(x, residual)
        h2, r2 = unfused(x, residual)
        assert_close(h1, h2)
        assert_close(r1, r2)
        assert r1.dtype == r2.dtype == torch.float32


def test_block_layout_and_residual():
    block = _block("rms", False, False, True)
    assert list(dict(block.named_children())) == ["norm", "mixer", "norm2", "mlp"]
    assert _block("rms", False, False, False).mlp is None
    x = torch.randn(2, 5, D)
    h, r = block(x)
    mixed = block.mixer(block.norm(x))
    torch.testing.assert_close(r, x + mixed)
    torch.testing.assert_close(h, block.mlp(block.norm2(x + mixed)))
    with pytest.raises(ValueError, match="norm_cls"):
        Block(D, partial(Mamba1, layer_idx=0), norm_cls=nn.Identity, fused_add_norm=True)


def test_cache_and_gradients():
    block = _block("rms", True, True, True)
    conv, state = block.allocate_inference_cache(3, 10)
    assert conv.shape == (3, 48, 4) and state.shape == (3, 48, 4)
    h, r = block(torch.randn(2, 7, D), torch.randn(2, 7, D))
    (h.square().mean() + r.mean()).backward()
    assert grads_everywhere(block) == []
