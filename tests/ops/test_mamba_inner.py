"""mamba_inner_fn (composed from the public ops) against mamba_inner_ref in float64, with
gradients, the RMS-normed variant and given B/C."""
import pytest
import torch

import ssm.ops as ops
from tests.ops.harness import assert_close, backends, device_of, rand, rel_err, use_backend


def make_inner(batch, D, L, N, rank, W, device, dtype=torch.float32):
    """Inputs and parameters of one mixer, all in ``dtype`` (a model cast to bf16)."""
    inp = dict(
        xz=rand(batch, 2 * D, L, device=device),
        conv1d_weight=rand(D, 1, W, device=device, scale=0.5), conv1d_bias=rand(D, device=device),
        x_proj_weight=rand(rank + 2 * N, D, device=device, scale=D ** -0.5),
        delta_proj_weight=rand(D, rank, device=device, scale=rank ** -0.5),
        out_proj_weight=rand(7, D, device=device, scale=D ** -0.5), out_proj_bias=rand(7, device=device),
        A=-torch.exp(rand(D, N, device=device, scale=0.5)), D=rand(D, device=device),
        delta_bias=rand(D, device=device, scale=0.3) - 1.0)
    return {k: v.to(dtype) for k, v in inp.items()}


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inner_matches_reference_with_gradients(backend, dtype):
    inp = make_inner(2, 6, 13, 4, 3, 4, device_of(backend), dtype)
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inp.items()}
    ref = {k: v.detach().double().requires_grad_() for k, v in inp.items()}
    with use_backend(backend):
        out = ops.mamba_inner_fn(**leaves)
    # Backward on the default backends: not every op in the path has a backward kernel everywhere.
    dout = torch.randn_like(out)
    out.backward(dout)
    want = ops.mamba_inner_ref(**ref)
    want.backward(dout.double())
    assert out.shape == (2, 13, 7)
    # In bf16 every projection rounds: the bound is the error of the reference run in bf16 itself.
    lowp = {k: v.detach().clone().requires_grad_() for k, v in inp.items()}
    lowp_out = ops.mamba_inner_ref(**lowp)
    lowp_out.backward(dout)
    check_inner(out, want, lowp_out, dtype, "out")
    for k in inp:
        check_inner(leaves[k].grad, ref[k].grad, lowp[k].grad, dtype, f"d{k}")


def check_inner(got, want, lowp, dtype, name):
    if dtype == torch.float32:
        assert_close(got, want, dtype, name, factor=2.0)
    else:
        err, bound = rel_err(got, want), 2 * rel_err(lowp, want) + 1e-3
        assert err <= bound, f"{name}: relative error {err:.3g} > {bound:.3g} (twice the bf16 reference's)"


def test_inner_rms_and_given_bc():
    inp = make_inner(1, 4, 9, 3, 2, 3, "cpu")
    B, C = rand(1, 1, 3, 9), rand(1, 1, 3, 9)
    out = ops.mamba_inner_fn(**inp, B=B, C=C)
    want = ops.mamba_inner_ref(**{k: v.double() for k, v in inp.items()}, B=B.double(), C=C.double())
    assert_close(out, want, torch.float32, "out with B, C given")
    w = rand(3)
    normed = ops.mamba_inner_fn(**inp, b_rms_weight=w, c_rms_weight=w, dt_rms_weight=rand(4))
    assert normed.shape == out.shape and not torch.isnan(normed).any()
    assert (normed - ops.mamba_inner_fn(**inp)).abs().max() > 1e-3, "rms weights must change the output"


def test_bad_input_is_named():
    inp = make_inner(1, 4, 9, 3, 2, 3, "cpu")
    with pytest.raises(ValueError, match="xz"):
        ops.mamba_inner_fn(**{**inp, "xz": torch.randn(1, 7, 9)})
    with pytest.raises(ValueError, match="x_proj_weight"):
        ops.mamba_inner_fn(**{**inp, "x_proj_weight": torch.randn(5, 4)})
