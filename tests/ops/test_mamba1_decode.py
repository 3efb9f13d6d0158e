"""mamba1_decode (one Mamba-1 decode token: conv update, x_proj, dt_proj, state step) on every
backend against the step-by-step float64 reference composition (states in place too), the kernel's
eligibility, the switch, greedy generation with and without the kernel, bad input."""
import pytest
import torch

from ssm.models import MambaConfig, MambaLMHeadModel
from ssm.ops import mamba1_block_decode as m1b
from ssm.ops import mamba1_decode as m1d
from ssm.ops.python import reference
from tests.ops.harness import DTYPES, assert_close, backends, device_of, rand, use_backend

CASES = [  # (batch, d_inner, d_state, dt_rank, d_conv)
    (1, 8, 16, 3, 4),
    (2, 37, 16, 5, 4),
    (3, 64, 5, 17, 3),
    (4, 129, 32, 48, 4),
]
OPTIONS = ["plain", "no_dt_bias", "state_f32", "state_bf16", "conv_cache_view", "conv_channels_last"]


def conv_cache(batch, dim, W, dtype, option, device):
    """The Mamba-1 conv cache (B, D, W), or a strided view of a larger / channels-last buffer."""
    if option == "conv_cache_view":
        return rand(batch + 1, dim, W + 3, dtype=dtype, device=device)[1:, :, 3:]
    if option == "conv_channels_last":
        return rand(batch, W, dim, dtype=dtype, device=device).transpose(1, 2)
    return rand(batch, dim, W, dtype=dtype, device=device)


def make(batch, dim, N, R, W, dtype, option, device="cpu"):
    sdtype = {"state_f32": torch.float32, "state_bf16": torch.bfloat16}.get(option, dtype)
    dev = dict(device=device)
    xz = rand(batch, 2 * dim, dtype=dtype, **dev)  # x and z: the halves of in_proj's output row, as in Mamba1.step
    ssm_state = (rand(batch, dim, N, dtype=sdtype, **dev) if batch == 1
                 else rand(batch * 2, dim, N, dtype=sdtype, **dev)[::2])
    return dict(x=xz[:, :dim], z=xz[:, dim:], conv_state=conv_cache(batch, dim, W, dtype, option, device),
                conv_weight=rand(dim, 1, W, scale=W ** -0.5, **dev), conv_bias=rand(dim, **dev),
                x_proj_weight=rand(R + 2 * N, dim, dtype=dtype, scale=dim ** -0.5, **dev),
                dt_proj_weight=rand(dim, R, dtype=dtype, scale=R ** -0.5, **dev),
                dt_bias=None if option == "no_dt_bias" else rand(dim, scale=0.3, **dev) - 1.0,
                A=-torch.exp(rand(dim, N, scale=0.5, **dev)), D=rand(dim, **dev), ssm_state=ssm_state,
                activation="silu")


def reference_decode(x, z, conv_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D,
                     ssm_state, activation):
    R, N = dt_proj_weight.shape[1], ssm_state.shape[2]
    xc = reference.dw_causal_conv_update(x, conv_state, conv_weight.squeeze(1), conv_bias, activation)
    dt, B, C = torch.split(xc @ x_proj_weight.t(), [R, N, N], dim=-1)
    return reference.selective_state_step(ssm_state, xc, dt @ dt_proj_weight.t(), A, B, C, D, z, dt_bias, True)


def as64(inp):
    return {k: (v.detach().double().clone() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}


def kernel_takes(inp):
    return m1d._kernel_ok(inp["x"], inp["z"], inp["conv_state"], inp["x_proj_weight"], inp["dt_proj_weight"],
                          inp["ssm_state"])


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("option", OPTIONS)
def test_matches_reference(backend, dtype, case, option):
    inp = make(*case, dtype, option, device_of(backend))
    ref = as64(inp)
    with use_backend(backend):
        assert kernel_takes(inp) == (backend == "cpu")
        y = m1d.mamba1_decode(**inp)
    assert y.dtype == dtype and y.shape == case[:2]
    # the composition rounds xc, x_dbl and dt to dtype, so does the kernel: two roundings' worth of error
    assert_close(y, reference_decode(**ref), dtype, "y", factor=2)
    assert_close(inp["conv_state"], ref["conv_state"], dtype, "conv_state")
    assert_close(inp["ssm_state"], ref["ssm_state"], inp["ssm_state"].dtype if dtype == torch.float32 else dtype,
                 "ssm_state", factor=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_equals_the_composition_over_steps(dtype):
    """Ten tokens through the kernel and through the composition of the separate ops, same states."""
    inp = make(2, 40, 16, 6, 4, dtype, "plain")
    other = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}
    for _ in range(10):
        x = rand(2, 80, dtype=dtype)
        for d in (inp, other):
            d["x"], d["z"] = x[:, :40], x[:, 40:]
        y = m1d.mamba1_decode(**inp)
        y_sep = m1d._composed(**other)
    assert_close(y, y_sep, dtype, "y", factor=0.1)
    assert_close(inp["ssm_state"], other["ssm_state"], dtype, "ssm_state", factor=0.1)
    assert torch.equal(inp["conv_state"], other["conv_state"])


def test_ineligible_calls_take_the_composition(monkeypatch):
    inp = make(5, 16, 4, 2, 4, torch.float32, "plain")
    assert not kernel_takes(inp)  # batch 5
    ref = as64(inp)
    assert_close(m1d.mamba1_decode(**inp), reference_decode(**ref), torch.float32, "y")
    small = make(2, 16, 4, 2, 4, torch.float32, "plain")
    assert kernel_takes(small)
    small["x_proj_weight"].requires_grad_(True)
    assert not kernel_takes(small)  # autograd
    small["x_proj_weight"].requires_grad_(False)
    monkeypatch.setattr(m1d, "ENABLED", False)
    assert not kernel_takes(small)


def _greedy(model, ids, monkeypatch, enabled):
    monkeypatch.setattr(m1b, "ENABLED", False)  # the per-block path (the stack plan would bypass mamba1_decode)
    monkeypatch.setattr(m1d, "ENABLED", enabled)
    calls = []
    kernel = m1d._kernel
    monkeypatch.setattr(m1d, "_kernel", lambda *a: calls.append(1) or kernel(*a))
    out = model.generate(ids, max_length=ids.shape[1] + 12)
    assert bool(calls) == enabled
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_generation_equal_with_and_without_the_kernel(dtype, monkeypatch):
    model = MambaLMHeadModel(MambaConfig(d_model=48, n_layer=2, vocab_size=101, ssm_cfg=dict(d_state=8)),
                             dtype=dtype)
    ids = torch.randint(0, 101, (3, 7))
    assert torch.equal(_greedy(model, ids, monkeypatch, True), _greedy(model, ids, monkeypatch, False))


@pytest.mark.parametrize("bad, error, words", [
    (dict(x=torch.randn(2, 8, 1)), ValueError, ["x", "2-d"]),
    (dict(z=torch.randn(2, 9)), ValueError, ["z", "(2, 8)"]),
    (dict(conv_state=torch.randn(2, 7, 4)), ValueError, ["conv_state", "(2, 8, *)"]),
    (dict(conv_state=torch.randn(2, 8, 2)), ValueError, ["conv_state", "width - 1"]),
    (dict(conv_weight=torch.randn(8, 2, 4)), ValueError, ["conv_weight", "(8, 1, W)"]),
    (dict(ssm_state=torch.randn(2, 8)), ValueError, ["ssm_state", "(2, 8, *)"]),
    (dict(A=torch.randn(8, 5)), ValueError, ["A", "(8, 16)"]),
    (dict(dt_proj_weight=torch.randn(9, 3)), ValueError, ["dt_proj_weight", "(8, *)"]),
    (dict(x_proj_weight=torch.randn(34, 8)), ValueError, ["x_proj_weight", "(35, 8)"]),
    (dict(D=torch.randn(7)), ValueError, ["D", "(8)"]),
    (dict(activation="relu"), ValueError, ["activation", "relu"]),
    (dict(x=torch.randint(0, 3, (2, 8))), TypeError, ["x", "dtype"]),
    (dict(conv_bias=[0.0] * 8), TypeError, ["conv_bias", "Tensor"]),
])
def test_bad_input_is_named(bad, error, words):
    inp = make(2, 8, 16, 3, 4, torch.float32, "plain")
    inp.update(bad)
    with pytest.raises(error) as info:
        m1d.mamba1_decode(**inp)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"
