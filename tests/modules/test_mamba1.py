import math

import pytest
import torch
import torch.nn.functional as F

import ssm
from ssm.modules import Mamba, Mamba1
from tests.modules.helpers import InferenceParams, assert_close, grads_everywhere, run_in_pieces

D_MODEL, D_STATE = 24, 5


def make(**kw):
    return Mamba1(D_MODEL, d_state=D_STATE, layer_idx=0, **kw)


def test_exports():
    assert ssm.Mamba is Mamba1 and Mamba is Mamba1


def test_parameters_and_init():
    m = Mamba1(32, d_state=16, d_conv=4, expand=2, dtype=torch.bfloat16, dt_min=0.01, dt_max=0.05)
    d_inner, dt_rank = 64, math.ceil(32 / 16)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert list(shapes) == ["A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
                            "dt_proj.weight", "dt_proj.bias", "out_proj.weight"]
    assert shapes["in_proj.weight"] == (2 * d_inner, 32)
    assert shapes["conv1d.weight"] == (d_inner, 1, 4)
    assert shapes["x_proj.weight"] == (dt_rank + 32, d_inner)
    assert shapes["dt_proj.weight"] == (d_inner, dt_rank)
    assert m.A_log.dtype == torch.float32 and m.D.dtype == torch.float32
    assert m.in_proj.weight.dtype == torch.bfloat16
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1, 17.0)).repeat(d_inner, 1))
    assert torch.equal(m.D, torch.ones(d_inner))
    dt = F.softplus(m.dt_proj.bias.float())
    assert dt.min() >= 0.01 * 0.98 and dt.max() <= 0.05 * 1.02
    assert m.dt_proj.weight.abs().max() <= dt_rank ** -0.5
    assert m.A_log._no_weight_decay and m.D._no_weight_decay and m.dt_proj.bias._no_reinit
    assert (m.d_inner, m.dt_rank, m.activation) == (64, 2, "silu")


def test_bad_arguments():
    with pytest.raises(ValueError, match="dt_init"):
        Mamba1(16, dt_init="lognormal")
    m = Mamba1(16)
    with pytest.raises(ValueError, match="layer_idx"):
        m(torch.randn(1, 3, 16), inference_params=InferenceParams(max_seqlen=3, max_batch_size=1))


@pytest.mark.parametrize("fast_path", [True, False])
def test_step_matches_forward(fast_path):
    m = make(use_fast_path=fast_path)
    x = torch.randn(2, 11, D_MODEL)
    ref = m(x)
    out, params = run_in_pieces(m, x, [4] + [1] * 7)
    assert_close(out, ref)
    conv_state, ssm_state = params.key_value_memory_dict[0]
    assert conv_state.shape == (2, m.d_inner, 4) and ssm_state.shape == (2, m.d_inner, D_STATE)


def test_chunked_prefill_matches_one_pass():
    m = make()
    x = torch.randn(2, 13, D_MODEL)
    ref, ref_params = run_in_pieces(m, x, [13])
    out, params = run_in_pieces(m, x, [2, 5, 1, 3, 2])
    assert_close(out, ref)
    for a, b in zip(params.key_value_memory_dict[0], ref_params.key_value_memory_dict[0]):
        assert_close(a, b)


def test_initial_states_continue_a_sequence():
    m = make()
    x = torch.randn(2, 12, D_MODEL)
    ref = m(x)
    head, params = run_in_pieces(m, x[:, :7], [7])
    conv_state, ssm_state = params.key_value_memory_dict[0]
    tail = m(x[:, 7:], initial_state=ssm_state.clone(), initial_conv_state=conv_state[..., 1:].clone())
    assert_close(torch.cat([head, tail], 1), ref)
    tail_cache_layout = m(x[:, 7:], initial_state=ssm_state, initial_conv_state=conv_state)
    assert_close(tail_cache_layout, tail)


def _packed(lengths):
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    seq_idx = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), torch.tensor(lengths))[None]
    return cu, seq_idx


def test_varlen_packed_batch_matches_separate_runs():
    m = make()
    lengths = [5, 1, 9, 3]
    cu, seq_idx = _packed(lengths)
    x = torch.randn(1, sum(lengths), D_MODEL)
    params = InferenceParams(max_seqlen=16, max_batch_size=len(lengths))
    out_cu = m(x, cu_seqlens=cu, inference_params=params)
    out_idx = m(x, seq_idx=seq_idx)
    conv_states, ssm_states = params.key_value_memory_dict[0]
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        single, p1 = run_in_pieces(m, x[:, s:e], [e - s])
        assert_close(out_cu[:, s:e], single)
        assert_close(out_idx[:, s:e], single)
        assert_close(conv_states[i], p1.key_value_memory_dict[0][0][0])
        assert_close(ssm_states[i], p1.key_value_memory_dict[0][1][0])


def test_flat_input_with_seqlen():
    m = make()
    x = torch.randn(3, 6, D_MODEL)
    assert_close(m(x.flatten(0, 1), seqlen=6), m(x).flatten(0, 1))


def test_gradients_reach_every_parameter():
    for fast in (True, False):
        m = make(use_fast_path=fast, bias=True)
        m(torch.randn(2, 9, D_MODEL)).square().mean().backward()
        assert grads_everywhere(m) == []


def test_allocate_inference_cache():
    m = Mamba1(16, d_state=4, d_conv=3, layer_idx=0, dtype=torch.float64)
    conv, state = m.allocate_inference_cache(5, 100)
    assert conv.shape == (5, 32, 3) and state.shape == (5, 32, 4)
    assert conv.dtype == state.dtype == torch.float64 and not conv.any() and not state.any()
    conv, state = m.allocate_inference_cache(2, 100, dtype=torch.float16)
    assert conv.dtype == state.dtype == torch.float16
