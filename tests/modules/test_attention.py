import math

import pytest
import torch
import torch.nn.functional as F

from ssm.modules import MHA
from ssm.modules.rotary import RotaryEmbedding, apply_rotary
from tests.modules.helpers import InferenceParams, assert_close, grads_everywhere, run_in_pieces

E = 32
CONFIGS = {
    "gqa_rotary_conv_mlp": dict(num_heads=4, num_heads_kv=2, rotary_emb_dim=8, d_conv=4, mlp_dim=40),
    "mqa_interleaved_headdim": dict(num_heads=4, num_heads_kv=1, head_dim=6, rotary_emb_dim=4,
                                    rotary_emb_interleaved=True, d_conv=3),
    "plain": dict(num_heads=2, qkv_proj_bias=False, out_proj_bias=False, softmax_scale=0.3),
}


def make(config, **kw):
    return MHA(E, causal=True, layer_idx=0, **CONFIGS[config], **kw)


def _complex_rotary(x, pos, dim, base, interleaved):
    """Rotary as a complex multiplication: pairs of features times exp(i * pos * inv_freq)."""
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    rot = torch.polar(torch.ones(len(pos), dim // 2, dtype=torch.float64), pos[:, None].double() * inv_freq)
    xr = x[..., :dim].double()
    pairs = (xr.unflatten(-1, (dim // 2, 2)) if interleaved else xr.unflatten(-1, (2, dim // 2)).transpose(-1, -2))
    out = torch.view_as_real(torch.view_as_complex(pairs.contiguous()) * rot[:, None])
    out = out.flatten(-2) if interleaved else out.transpose(-1, -2).flatten(-2)
    return torch.cat([out.to(x.dtype), x[..., dim:]], -1)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_matches_complex_rotation(interleaved):
    rot = RotaryEmbedding(8, base=500.0, interleaved=interleaved)
    q, k = torch.randn(2, 7, 3, 12), torch.randn(2, 7, 1, 12)
    q2, k2 = rot(q, k, seqlen_offset=5)
    pos = torch.arange(5, 12)
    assert_close(q2, _complex_rotary(q, pos, 8, 500.0, interleaved), tol=1e-5)
    assert_close(k2, _complex_rotary(k, pos, 8, 500.0, interleaved), tol=1e-5)
    offsets = torch.tensor([5, 0])
    q3, _ = rot(q, k, seqlen_offset=offsets)
    assert_close(q3[0], q2[0], tol=1e-6)
    assert_close(q3[1], _complex_rotary(q[1:], torch.arange(7), 8, 500.0, interleaved)[0], tol=1e-5)
    assert "inv_freq" not in rot.state_dict() and "inv_freq" in dict(rot.named_buffers())


def _naive_attention(m, x):
    """Attention written out: projections, conv, rotary, GQA head mapping, softmax."""
    qkv = m.in_proj(x)
    qkv_dim = m.head_dim * (m.num_heads + 2 * m.num_heads_kv)
    qkv, x_mlp = qkv[..., :qkv_dim], qkv[..., qkv_dim:]
    if m.d_conv > 0:
        qkv = F.conv1d(qkv.transpose(1, 2), m.conv1d.weight, m.conv1d.bias, padding=m.d_conv - 1,
                       groups=qkv_dim)[..., :x.shape[1]].transpose(1, 2)
    hd, h, hkv = m.head_dim, m.num_heads, m.num_heads_kv
    q = qkv[..., :h * hd].unflatten(-1, (h, hd))
    k = qkv[..., h * hd:(h + hkv) * hd].unflatten(-1, (hkv, hd))
    v = qkv[..., (h + hkv) * hd:].unflatten(-1, (hkv, hd))
    if m.rotary_emb_dim:
        pos = torch.arange(x.shape[1])
        q = _complex_rotary(q, pos, m.rotary_emb_dim, 10000.0, m.rotary_emb.interleaved)
        k = _complex_rotary(k, pos, m.rotary_emb_dim, 10000.0, m.rotary_emb.interleaved)
    kv_head = torch.arange(h) // (h // hkv)
    scores = torch.einsum("blhd,bshd->bhls", q, k[:, :, kv_head]) * (m.softmax_scale or hd ** -0.5)
    L = x.shape[1]
    if m.causal:
        scores = scores.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
    ctx = torch.einsum("bhls,bshd->blhd", scores.softmax(-1), v[:, :, kv_head]).flatten(-2)
    if x_mlp.shape[-1]:
        up, gate = x_mlp.chunk(2, -1)
        ctx = torch.cat([ctx, up * F.silu(gate)], -1)
    return m.out_proj(ctx)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_forward_matches_naive_attention(config):
    m = make(config)
    x = torch.randn(2, 9, E)
    assert_close(m(x), _naive_attention(m, x))
    m.causal = False
    assert_close(m(x), _naive_attention(m, x))


def test_parameters():
    m = make("gqa_rotary_conv_mlp")
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    qkv_dim = 8 * (4 + 2 * 2)
    assert shapes == {"in_proj.weight": (qkv_dim + 256, E), "in_proj.bias": (qkv_dim + 256,),
                      "conv1d.weight": (qkv_dim, 1, 4), "conv1d.bias": (qkv_dim,),
                      "out_proj.weight": (E, 8 * 4 + 128), "out_proj.bias": (E,)}
    assert m.mlp_dim == 256 and m.head_dim == 8
    with pytest.raises(ValueError, match="num_heads_kv"):
        MHA(E, num_heads=4, num_heads_kv=3)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_decode_matches_forward(config):
    m = make(config)
    x = torch.randn(2, 10, E)
    ref = m(x)
    out, params = run_in_pieces(m, x, [4] + [1] * 6)
    assert_close(out, ref)
    out, _ = run_in_pieces(m, x, [1] * 10)
    assert_close(out, ref)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_chunked_prefill_matches_one_pass(config):
    m = make(config)
    x = torch.randn(2, 12, E)
    ref = m(x)
    out, _ = run_in_pieces(m, x, [3, 4, 1, 2, 2])
    assert_close(out, ref)


def test_conv_state_holds_raw_qkv():
    m = make("gqa_rotary_conv_mlp")
    x = torch.randn(2, 6, E)
    _, params = run_in_pieces(m, x, [6])
    kv_cache, conv_state = params.key_value_memory_dict[0]
    qkv_dim = conv_state.shape[1]
    raw = m.in_proj(x)[..., :qkv_dim].transpose(1, 2)
    assert_close(conv_state, raw[..., -4:], tol=1e-6)
    assert kv_cache.shape == (2, 6, 2, 2, 8)


def test_lengths_per_sample_positions_per_row():
    """Rows with different cached lengths (graph-replay protocol) decode as if each were alone."""
    m = make("gqa_rotary_conv_mlp")
    lengths = [3, 6]
    x = torch.randn(2, 8, E)
    params = InferenceParams(max_seqlen=10, max_batch_size=2)
    for row, n in enumerate(lengths):
        params.batch_size_offset = row
        m(x[row:row + 1, :n], inference_params=params)
    params.batch_size_offset = 0
    params.lengths_per_sample = torch.tensor(lengths, dtype=torch.int32)
    params.seqlen_offset = max(lengths)
    new = torch.randn(2, 1, E)
    out = m(new, inference_params=params)
    params.lengths_per_sample += 1
    params.seqlen_offset += 1
    new2 = torch.randn(2, 2, E)
    out2 = m(new2, inference_params=params)  # a 2-token decode chunk
    for row, n in enumerate(lengths):
        alone = m(torch.cat([x[row:row + 1, :n], new[row:row + 1], new2[row:row + 1]], 1))
        assert_close(out[row], alone[0, -3:-2])
        assert_close(out2[row], alone[0, -2:])


def test_varlen_packed_batch_matches_separate_runs():
    m = make("gqa_rotary_conv_mlp")
    lengths = [4, 1, 7]
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    x = torch.randn(1, sum(lengths), E)
    out = m(x, cu_seqlens=cu)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        assert_close(out[:, s:e], m(x[:, s:e]))
    with pytest.raises(ValueError, match="seq_idx"):
        m(x, cu_seqlens=cu, inference_params=InferenceParams(max_seqlen=20, max_batch_size=1))


def test_gradients_and_cache():
    m = make("gqa_rotary_conv_mlp")
    m(torch.randn(2, 7, E)).square().mean().backward()
    assert grads_everywhere(m) == []
    kv, conv = MHA(E, 4, d_conv=0, dtype=torch.float64).allocate_inference_cache(3, 11)
    assert conv is None and kv.shape == (3, 11, 2, 4, 8) and kv.dtype == torch.float64 and not kv.any()
