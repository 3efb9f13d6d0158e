"""mamba1_block_decode (one decode token through a prenorm Mamba-1 block: add + norm, in_proj, the
decode layer, out_proj) on every backend against the float64 reference composition (states in
place too), against the composition of the separate ops over steps, the kernel's eligibility, the
switch, bad input."""
import pytest
import torch

from ssm.ops import mamba1_block_decode as m1b
from ssm.ops.python import reference
from tests.ops.harness import DTYPES, assert_close, backends, device_of, rand, use_backend
from tests.ops.test_mamba1_decode import as64, conv_cache, reference_decode

CASES = [  # (batch, d_model, d_inner, d_state, dt_rank, d_conv)
    (1, 8, 16, 16, 3, 4),
    (2, 24, 37, 16, 5, 4),
    (3, 33, 64, 5, 17, 3),
    (4, 64, 129, 32, 48, 4),
]
OPTIONS = ["plain", "rms", "first_block", "biases", "state_f32", "conv_cache_view"]


def make(batch, d_model, dim, N, R, W, dtype, option, device="cpu"):
    sdtype = torch.float32 if option == "state_f32" else dtype
    dev = dict(device=device)
    biases = option == "biases"
    ssm_state = (rand(batch, dim, N, dtype=sdtype, **dev) if batch == 1
                 else rand(batch * 2, dim, N, dtype=sdtype, **dev)[::2])
    return dict(hidden=rand(batch, d_model, dtype=dtype, **dev),
                residual=None if option == "first_block" else rand(batch, d_model, **dev),
                norm_weight=rand(d_model, **dev) + 1.0, norm_bias=None if option == "rms" else rand(d_model, **dev),
                in_proj_weight=rand(2 * dim, d_model, dtype=dtype, scale=d_model ** -0.5, **dev),
                in_proj_bias=rand(2 * dim, dtype=dtype, **dev) if biases else None,
                conv_state=conv_cache(batch, dim, W, dtype, option, device),
                conv_weight=rand(dim, 1, W, scale=W ** -0.5, **dev), conv_bias=rand(dim, **dev),
                x_proj_weight=rand(R + 2 * N, dim, dtype=dtype, scale=dim ** -0.5, **dev),
                dt_proj_weight=rand(dim, R, dtype=dtype, scale=R ** -0.5, **dev),
                dt_bias=rand(dim, scale=0.3, **dev) - 1.0, A=-torch.exp(rand(dim, N, scale=0.5, **dev)),
                D=rand(dim, **dev), ssm_state=ssm_state,
                out_proj_weight=rand(d_model, dim, dtype=dtype, scale=dim ** -0.5, **dev),
                out_proj_bias=rand(d_model, dtype=dtype, **dev) if biases else None,
                is_rms=option == "rms", eps=1e-5, activation="silu")


def reference_block(hidden, residual, norm_weight, norm_bias, in_proj_weight, in_proj_bias, conv_state, conv_weight,
                    conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, ssm_state, out_proj_weight,
                    out_proj_bias, is_rms, eps, activation):
    y, res = reference.fused_layer_norm(hidden, norm_weight, norm_bias, residual, is_rms, eps, True, True)
    xz = torch.nn.functional.linear(y, in_proj_weight, in_proj_bias)
    dim = in_proj_weight.shape[0] // 2
    y = reference_decode(xz[:, :dim], xz[:, dim:], conv_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                         dt_bias, A, D, ssm_state, activation)
    return torch.nn.functional.linear(y, out_proj_weight, out_proj_bias), res


def kernel_takes(inp):
    return m1b.kernel_ok(inp["hidden"], inp["residual"], inp["in_proj_weight"], inp["out_proj_weight"],
                         inp["conv_state"], inp["x_proj_weight"], inp["dt_proj_weight"], inp["ssm_state"])


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("option", OPTIONS)
def test_matches_reference(backend, dtype, case, option):
    inp = make(*case, dtype, option, device_of(backend))
    ref = as64(inp)
    hidden_in, residual_in = inp["hidden"].clone(), None if inp["residual"] is None else inp["residual"].clone()
    with use_backend(backend):
        assert kernel_takes(inp) == (backend == "cpu")
        out, res = m1b.mamba1_block_decode(**inp)
    assert out.dtype == dtype and out.shape == case[:2] and res.dtype == torch.float32
    ref_out, ref_res = reference_block(**ref)
    # normed, xz, xc, x_dbl, dt and y are rounded to dtype as the separate ops' outputs are
    assert_close(out, ref_out, dtype, "out", factor=3)
    assert_close(res, ref_res, dtype, "residual")
    assert_close(inp["conv_state"], ref["conv_state"], dtype, "conv_state", factor=2)
    assert_close(inp["ssm_state"], ref["ssm_state"], dtype, "ssm_state", factor=3)
    assert torch.equal(inp["hidden"], hidden_in)  # the inputs are not written
    assert residual_in is None or torch.equal(inp["residual"], residual_in)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_equals_the_composition_over_steps(dtype):
    """Eight tokens through the kernel and through the composition of the separate ops, same states."""
    inp = make(2, 24, 40, 16, 6, 4, dtype, "biases")
    other = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}
    for _ in range(8):
        hidden, residual = rand(2, 24, dtype=dtype), rand(2, 24)
        for d in (inp, other):
            d["hidden"], d["residual"] = hidden, residual
        out, res = m1b.mamba1_block_decode(**inp)
        out_sep, res_sep = m1b._composed(**{k: other[k] for k in COMPOSED_ORDER})
    assert_close(out, out_sep, dtype, "out", factor=0.1)
    assert torch.equal(res, res_sep)
    assert_close(inp["ssm_state"], other["ssm_state"], dtype, "ssm_state", factor=0.1)
    assert torch.equal(inp["conv_state"], other["conv_state"])


COMPOSED_ORDER = ["hidden", "residual", "norm_weight", "norm_bias", "is_rms", "eps", "in_proj_weight", "in_proj_bias",
                  "conv_state", "conv_weight", "conv_bias", "x_proj_weight", "dt_proj_weight", "dt_bias", "A", "D",
                  "ssm_state", "out_proj_weight", "out_proj_bias", "activation"]


def test_ineligible_calls_take_the_composition(monkeypatch):
    inp = make(5, 8, 16, 4, 2, 4, torch.float32, "plain")
    assert not kernel_takes(inp)  # batch 5
    ref = as64(inp)
    out, res = m1b.mamba1_block_decode(**inp)
    assert_close(out, reference_block(**ref)[0], torch.float32, "out")
    small = make(2, 8, 16, 4, 2, 4, torch.float32, "plain")
    assert kernel_takes(small)
    small["residual"] = small["residual"].to(torch.bfloat16)
    assert not kernel_takes(small)  # residual stream not in float32
    small["residual"] = None
    small["in_proj_weight"].requires_grad_(True)
    assert not kernel_takes(small)  # autograd
    small["in_proj_weight"].requires_grad_(False)
    monkeypatch.setattr(m1b, "ENABLED", False)
    assert not kernel_takes(small)


@pytest.mark.parametrize("bad, error, words", [
    (dict(hidden=torch.randn(2, 8, 1)), ValueError, ["hidden", "2-d"]),
    (dict(residual=torch.randn(2, 9)), ValueError, ["residual", "(2, 8)"]),
    (dict(norm_weight=torch.randn(7)), ValueError, ["norm_weight", "(8)"]),
    (dict(in_proj_weight=torch.randn(32, 9)), ValueError, ["in_proj_weight", "(*, 8)"]),
    (dict(in_proj_weight=torch.randn(31, 8)), ValueError, ["in_proj_weight", "even"]),
    (dict(out_proj_weight=torch.randn(8, 15)), ValueError, ["out_proj_weight", "(8, 16)"]),
    (dict(conv_state=torch.randn(2, 15, 4)), ValueError, ["conv_state", "(2, 16, *)"]),
    (dict(A=torch.randn(16, 5)), ValueError, ["A", "(16, 4)"]),
])
def test_bad_input_is_named(bad, error, words):
    inp = make(2, 8, 16, 4, 2, 4, torch.float32, "plain")
    inp.update(bad)
    with pytest.raises(error) as info:
        m1b.mamba1_block_decode(**inp)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"
