"""dw_causal_conv on every backend against the float64 reference: forward, gradients,
decode update, bad input."""
import pytest
import torch

import ssm.ops as ops
from ssm.ops.python import reference
from tests.ops.harness import DTYPES, assert_close, backends, device_of, rand, to64, use_backend

SHAPES = [  # (B, D, L, W)
    (1, 1, 1, 4),
    (2, 5, 7, 4),
    (2, 8, 33, 3),
    (1, 3, 64, 2),
    (3, 7, 19, 5),
]


def make_inputs(B, D, L, W, dtype, device, *, bias, seq, init, noncontig):
    x = rand(B, D, L, dtype=dtype, device=device, noncontig=noncontig)
    weight = rand(D, W, device=device, noncontig=noncontig, scale=0.5)
    b = rand(D, device=device) if bias else None
    seq_idx = None
    if seq:
        # Random segment boundaries per row (sorted ids), int32 like mamba_ssm.
        seq_idx = torch.sort(torch.randint(0, 3, (B, L), device=device), dim=1).values.to(torch.int32)
    initial = rand(B, D, W - 1, dtype=dtype, device=device) if init else None
    return x, weight, b, seq_idx, initial


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("options", ["plain", "bias+silu", "seq_idx", "init+final", "all", "noncontig"])
def test_forward_matches_reference(backend, dtype, shape, options):
    B, D, L, W = shape
    flags = dict(bias=options in ("bias+silu", "all"), seq=options in ("seq_idx", "all"),
                 init=options in ("init+final", "all"), noncontig=options in ("noncontig", "all"))
    activation = "silu" if options in ("bias+silu", "all", "noncontig") else None
    final = options in ("init+final", "all")
    x, w, b, seq_idx, init = make_inputs(*shape, dtype, device_of(backend), **flags)
    with use_backend(backend):
        out = ops.dw_causal_conv(x, w, b, activation, seq_idx=seq_idx, initial_states=init,
                                 return_final_states=final)
    x64, w64, b64, init64 = to64(x, w, b, init)
    ref = reference.dw_causal_conv(x64, w64, b64, activation, seq_idx=seq_idx, initial_states=init64,
                                   return_final_states=final)
    if final:
        assert out[0].dtype == dtype and out[1].dtype == dtype
        assert_close(out[0], ref[0], dtype, "y")
        assert_close(out[1], ref[1], dtype, "final_states")
    else:
        assert out.dtype == dtype
        assert_close(out, ref, dtype, "y")


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("options", ["plain", "all"])
def test_gradients_match_reference(backend, dtype, options):
    B, D, L, W = 2, 6, 21, 4
    full = options == "all"
    x, w, b, seq_idx, init = make_inputs(B, D, L, W, dtype, device_of(backend), bias=full, seq=full,
                                         init=full, noncontig=full)
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b, init)]
    with use_backend(backend):
        y, fs = ops.dw_causal_conv(leaves[0], leaves[1], leaves[2], "silu", seq_idx=seq_idx,
                                   initial_states=leaves[3], return_final_states=True)
    dy, dfs = torch.randn_like(y), torch.randn_like(fs)
    torch.autograd.backward([y, fs], [dy, dfs])
    ref_leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b, init)]
    ry, rfs = reference.dw_causal_conv(ref_leaves[0], ref_leaves[1], ref_leaves[2], "silu", seq_idx=seq_idx,
                                       initial_states=ref_leaves[3], return_final_states=True)
    torch.autograd.backward([ry, rfs], [dy.double(), dfs.double()])
    for name, got, want in zip(("dx", "dweight", "dbias", "dinitial_states"), leaves, ref_leaves):
        if got is not None:
            assert got.grad is not None and got.grad.dtype == got.dtype, name
            assert_close(got.grad, want.grad, dtype, name, factor=2.0)


@pytest.mark.parametrize("backend", backends())
def test_long_sequence(backend):
    x, w, b, _, _ = make_inputs(1, 4, 4099, 4, torch.bfloat16, device_of(backend), bias=True, seq=False,
                                init=False, noncontig=False)
    with use_backend(backend):
        out = ops.dw_causal_conv(x, w, b, "silu")
    assert_close(out, reference.dw_causal_conv(*to64(x, w, b), "silu"), torch.bfloat16)


def test_weight_with_unit_middle_dim_and_causal_conv1d_name():
    x, w, b = rand(2, 4, 9), rand(4, 1, 3), rand(4)
    out = ops.causal_conv1d_fn(x, w, b, activation="silu")
    ref = reference.dw_causal_conv(*to64(x, w[:, 0], b), "silu")
    assert_close(out, ref, torch.float32)


@pytest.mark.parametrize("bad, error, words", [
    (dict(x=torch.randn(4, 9)), ValueError, ["x", "3-d", "(4, 9)"]),
    (dict(weight=torch.randn(5, 3)), ValueError, ["weight", "channels", "(5, 3)"]),
    (dict(x=torch.randint(0, 3, (2, 4, 9))), TypeError, ["x", "dtype", "int64"]),
    (dict(bias=torch.randn(3)), ValueError, ["bias", "(4)", "(3,)"]),
    (dict(seq_idx=torch.zeros(2, 9)), TypeError, ["seq_idx", "dtype", "float32"]),
    (dict(seq_idx=torch.zeros(2, 8, dtype=torch.int32)), ValueError, ["seq_idx", "(2, 9)", "(2, 8)"]),
    (dict(initial_states=torch.randn(2, 4, 3)), ValueError, ["initial_states", "(2, 4, 2)"]),
    (dict(activation="relu"), ValueError, ["activation", "relu"]),
    (dict(weight="w"), TypeError, ["weight", "str"]),
])
def test_bad_input_is_named(bad, error, words):
    args = dict(x=torch.randn(2, 4, 9), weight=torch.randn(4, 3), bias=torch.randn(4), activation="silu",
                seq_idx=None, initial_states=None)
    args.update(bad)
    with pytest.raises(error) as info:
        ops.dw_causal_conv(args["x"], args["weight"], args["bias"], args["activation"],
                           seq_idx=args["seq_idx"], initial_states=args["initial_states"])
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_forced_backend_that_cannot_run_says_why():
    x = torch.randn(1, 2, 5, dtype=torch.float64)
    with use_backend("cpu"), pytest.raises(RuntimeError, match="dtype"):
        ops.dw_causal_conv(x, torch.randn(2, 4, dtype=torch.float64))
