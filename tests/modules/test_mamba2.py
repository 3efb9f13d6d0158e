import pytest
import torch
import torch.nn.functional as F

import ssm
from ssm.modules import Mamba2
from tests.modules.helpers import InferenceParams, assert_close, grads_everywhere, run_in_pieces

D_MODEL = 32

CONFIGS = {
    "default": dict(),
    "groups_dssm_hdim_limit": dict(ngroups=2, d_ssm=48, D_has_hdim=True, dt_limit=(0.02, 0.08)),
    "no_rmsnorm_gate_first": dict(rmsnorm=False, ngroups=4, d_ssm=32),
    "norm_before_gate": dict(norm_before_gate=True, ngroups=2, dt_limit=(0.0, 0.05)),
}


def make(**kw):
    base = dict(d_state=6, headdim=8, chunk_size=4, layer_idx=0)
    base.update(kw)
    return Mamba2(D_MODEL, **base)


def test_exports():
    assert ssm.Mamba2 is Mamba2


def test_parameters_and_init():
    m = Mamba2(32, d_state=8, headdim=8, ngroups=2, d_ssm=48, D_has_hdim=True, dtype=torch.bfloat16,
               dt_min=0.01, dt_max=0.05, A_init_range=(2, 3))
    d_inner, nheads, conv_dim = 64, 6, 48 + 2 * 2 * 8
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {"dt_bias": (nheads,), "A_log": (nheads,), "D": (48,),
                      "in_proj.weight": (2 * d_inner + 2 * 2 * 8 + nheads, 32),
                      "conv1d.weight": (conv_dim, 1, 4), "conv1d.bias": (conv_dim,), "norm.weight": (48,),
                      "out_proj.weight": (32, d_inner)}
    assert list(shapes)[:3] == ["dt_bias", "A_log", "D"]
    assert m.A_log.dtype == torch.bfloat16 and m.dt_bias.dtype == torch.bfloat16 and m.D.dtype == torch.float32
    A = torch.exp(m.A_log.float())
    assert A.min() >= 2 * 0.99 and A.max() <= 3 * 1.01
    dt = F.softplus(m.dt_bias.float())
    assert dt.min() >= 0.01 * 0.98 and dt.max() <= 0.05 * 1.02
    assert m.dt_bias._no_weight_decay and m.A_log._no_weight_decay and m.D._no_weight_decay
    assert m.norm.group_size == 48 // 2 and m.norm.norm_before_gate is False and m.norm.eps == 1e-5
    assert (m.d_inner, m.d_ssm, m.nheads, m.ngroups, m.world_size) == (64, 48, 6, 2, 1)
    assert Mamba2(32, headdim=8).A_log.dtype == torch.float32
    assert "norm.weight" not in Mamba2(32, headdim=8, rmsnorm=False).state_dict()


def test_conv_init_and_bad_arguments():
    m = Mamba2(32, headdim=8, conv_init=0.01)
    assert m.conv1d.weight.abs().max() <= 0.01
    with pytest.raises(ValueError, match="headdim"):
        Mamba2(32, headdim=7)
    with pytest.raises(ValueError, match="A_init_range"):
        Mamba2(32, headdim=8, A_init_range=(0, 4))


@pytest.mark.parametrize("config", list(CONFIGS))
def test_step_matches_forward(config):
    m = make(**CONFIGS[config])
    x = torch.randn(2, 10, D_MODEL)
    ref = m(x)
    out, params = run_in_pieces(m, x, [3] + [1] * 7)
    assert_close(out, ref)
    conv_state, ssm_state = params.key_value_memory_dict[0]
    assert conv_state.shape == (2, m.conv1d.weight.shape[0], 4) and conv_state.stride(1) == 1
    assert ssm_state.shape == (2, m.nheads, m.headdim, m.d_state)


@pytest.mark.parametrize("config", ["default", "groups_dssm_hdim_limit"])
def test_unfused_path_matches_fused(config):
    fused = make(**CONFIGS[config])
    unfused = make(**CONFIGS[config], use_mem_eff_path=False)
    unfused.load_state_dict(fused.state_dict())
    x = torch.randn(2, 9, D_MODEL)
    assert_close(unfused(x), fused(x))


def test_chunked_prefill_matches_one_pass():
    m = make(**CONFIGS["groups_dssm_hdim_limit"])
    x = torch.randn(2, 14, D_MODEL)
    ref, ref_params = run_in_pieces(m, x, [14])
    out, params = run_in_pieces(m, x, [5, 6, 1, 2])
    assert_close(out, ref)
    for a, b in zip(params.key_value_memory_dict[0], ref_params.key_value_memory_dict[0]):
        assert_close(a, b)


@pytest.mark.parametrize("use_mem_eff_path", [True, False])
def test_varlen_packed_batch_matches_separate_runs(use_mem_eff_path):
    m = make(ngroups=2, use_mem_eff_path=use_mem_eff_path)
    lengths = [6, 1, 9, 4]
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int64)
    seq_idx = torch.repeat_interleave(torch.arange(4, dtype=torch.int32), torch.tensor(lengths))[None]
    x = torch.randn(1, sum(lengths), D_MODEL)
    out_cu = m(x, cu_seqlens=cu)
    out_idx = m(x, seq_idx=seq_idx)
    params = InferenceParams(max_seqlen=16, max_batch_size=4)
    out_cache = m(x, cu_seqlens=cu, inference_params=params)
    conv_states, ssm_states = params.key_value_memory_dict[0]
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        single, p1 = run_in_pieces(m, x[:, s:e], [e - s])
        for out in (out_cu, out_idx, out_cache):
            assert_close(out[:, s:e], single)
        assert_close(conv_states[i], p1.key_value_memory_dict[0][0][0])
        assert_close(ssm_states[i], p1.key_value_memory_dict[0][1][0])


def test_flat_input_with_seqlen():
    m = make()
    x = torch.randn(3, 5, D_MODEL)
    assert_close(m(x.flatten(0, 1), seqlen=5), m(x).flatten(0, 1))
    params = InferenceParams(max_seqlen=5, max_batch_size=3)
    assert_close(m(x.flatten(0, 1), seqlen=5, inference_params=params), m(x).flatten(0, 1))


@pytest.mark.parametrize("use_mem_eff_path", [True, False])
def test_gradients_reach_every_parameter(use_mem_eff_path):
    # a dt_limit that clamps only some dt values: one that clamps all of them (possible at this
    # size with (0.02, 0.08)) leaves dt_bias without a gradient, correctly
    config = dict(CONFIGS["groups_dssm_hdim_limit"], dt_limit=(0.002, 0.5))
    m = make(**config, bias=True, use_mem_eff_path=use_mem_eff_path)
    m(torch.randn(2, 9, D_MODEL)).square().mean().backward()
    assert grads_everywhere(m) == []


class _FakeGroup:
    def size(self):
        return 2

    def rank(self):
        return 0


def test_process_group_gives_local_sizes():
    # tensor-parallel runs are tested in tests/distributed/test_tensor_parallel.py
    m = Mamba2(32, headdim=8, ngroups=2, process_group=_FakeGroup(), sequence_parallel=False)
    assert m.world_size == 2 and m.d_inner == 32 and m.ngroups == 1 and m.sequence_parallel is False
    assert m.in_proj.weight.shape == (2 * 32 + 2 * 128 + 4, 32) and m.out_proj.weight.shape == (32, 32)
    assert Mamba2(32, headdim=8, process_group=None).world_size == 1


def test_allocate_inference_cache():
    m = make(dtype=torch.float64)
    conv, state = m.allocate_inference_cache(3, 50)
    assert conv.shape == (3, m.conv1d.weight.shape[0], 4) and conv.stride(1) == 1
    assert state.shape == (3, m.nheads, m.headdim, m.d_state)
    assert conv.dtype == state.dtype == torch.float64 and not conv.any() and not state.any()
