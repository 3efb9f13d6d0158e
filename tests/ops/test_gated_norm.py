"""Gated RMSNorm / LayerNorm (Mamba-2's RMSNormGated) on every backend against the float64
reference and an explicit formulation: group_size, norm_before_gate, z on/off, gradients,
modules, bad input, torch.compile."""
import pytest
import torch
import torch.nn.functional as F

import ssm.ops as ops
from ssm.ops.python import reference
from tests.ops.harness import DTYPES, assert_close, backends, device_of, rand, to64, use_backend


SHAPES = [(1, 1, 8, None), (2, 5, 12, 4), (3, 7, 33, 11), (1, 9, 256, 64), (2, 3, 30, None)]  # (B, L, N, group)


def explicit(x, w, b, z, group, norm_before_gate, is_rms, eps):
    """The gated norm written out per group in float64."""
    x = x.double()
    g = x.shape[-1] if group is None else group
    gate = None if z is None else F.silu(z.double())
    if gate is not None and not norm_before_gate:
        x = x * gate
    xg = x.unflatten(-1, (-1, g))
    if is_rms:
        xhat = xg / torch.sqrt(xg.pow(2).mean(-1, keepdim=True) + eps)
    else:
        xhat = F.layer_norm(xg, (g,), eps=eps)
    y = xhat.flatten(-2) * w.double() + (0 if b is None else b.double())
    return y * gate if gate is not None and norm_before_gate else y


def make(shape, dtype, device, *, z, bias, noncontig):
    B, L, N, _ = shape
    x = rand(B, L, N, dtype=dtype, device=device, noncontig=noncontig)
    zz = rand(B, L, N, dtype=dtype, device=device, noncontig=noncontig) if z else None
    w = rand(N, device=device) * 0.5 + 1
    return x, w, rand(N, device=device) if bias else None, zz


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("option", ["plain", "z-before", "z-after", "z-after+bias", "noncontig"])
@pytest.mark.parametrize("is_rms", [True, False], ids=["rms", "ln"])
def test_forward_matches_reference(backend, dtype, shape, option, is_rms):
    group = shape[3]
    x, w, b, z = make(shape, dtype, device_of(backend), z=option != "plain", bias="bias" in option,
                      noncontig=option == "noncontig")
    nbg = option != "z-after" and option != "z-after+bias"
    with use_backend(backend):
        y = ops.gated_rms_norm(x, w, b, z, eps=1e-6, group_size=group, norm_before_gate=nbg, is_rms_norm=is_rms)
    ref = reference.gated_rms_norm(*to64(x, w, b, z), eps=1e-6, group_size=group, norm_before_gate=nbg,
                                   is_rms_norm=is_rms)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, ref, dtype, "y vs reference")
    assert_close(y, explicit(x, w, b, z, group, nbg, is_rms, 1e-6), dtype, "y vs explicit")


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group", [None, 5])
@pytest.mark.parametrize("option", ["no-z", "z-before", "z-after+bias", "noncontig"])
@pytest.mark.parametrize("is_rms", [True, False], ids=["rms", "ln"])
def test_gradients_match_reference(backend, dtype, group, option, is_rms):
    nbg = option != "z-after+bias"
    x, w, b, z = make((2, 7, 35, group), dtype, device_of(backend), z=option != "no-z", bias="bias" in option,
                      noncontig=option == "noncontig")
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b, z)]
    with use_backend(backend):
        y = ops.gated_rms_norm(*leaves, group_size=group, norm_before_gate=nbg, is_rms_norm=is_rms)
        dy = torch.randn_like(y)
        y.backward(dy)  # the forced backend runs the backward too
    ref_leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b, z)]
    explicit(*ref_leaves, group, nbg, is_rms, 1e-6).backward(dy.double())
    for name, got, want in zip(("dx", "dweight", "dbias", "dz"), leaves, ref_leaves):
        if got is not None:
            assert got.grad is not None and got.grad.dtype == got.dtype, name
            assert_close(got.grad, want.grad, dtype, name, factor=2.0)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 520, 1536, None), (1, 1101, 1024, 512), (1, 33, 384, 96), (1, 5, 4096, None),
                                   (2, 3, 4112, 2056), (1, 3, 8200, None)])
@pytest.mark.parametrize("option", ["no-z", "z-before", "z-after+bias"])
@pytest.mark.parametrize("is_rms", [True, False], ids=["rms", "ln"])
def test_gradients_packed_groups(backend, dtype, shape, option, is_rms):
    """Groups of 8-feature packs: several rows of one group per block (the last block partly
    used), a partly used warp, more rows than partial sums, groups of two packs a thread in the
    forward (4096; 2056: the second pack partly used), and groups wider than the register kernels
    take (8200); forward and backward."""
    nbg = option != "z-after+bias"
    x, w, b, z = make(shape, dtype, device_of(backend), z=option != "no-z", bias="bias" in option, noncontig=False)
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b, z)]
    with use_backend(backend):
        y = ops.gated_rms_norm(*leaves, group_size=shape[3], norm_before_gate=nbg, is_rms_norm=is_rms)
        dy = torch.randn_like(y)
        y.backward(dy)
    ref_leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b, z)]
    ref = explicit(*ref_leaves, shape[3], nbg, is_rms, 1e-6)
    ref.backward(dy.double())
    assert_close(y, ref.detach(), dtype, "y")
    for name, got, want in zip(("dx", "dweight", "dbias", "dz"), leaves, ref_leaves):
        if got is not None:
            assert_close(got.grad, want.grad, dtype, name, factor=2.0)


@pytest.mark.parametrize("backend", backends())
def test_long_sequence(backend):
    x, w, b, z = make((1, 4099, 64, 16), torch.bfloat16, device_of(backend), z=True, bias=False, noncontig=False)
    with use_backend(backend):
        y = ops.gated_rms_norm(x, w, None, z, group_size=16, norm_before_gate=False)
    assert_close(y, explicit(x, w, None, z, 16, False, True, 1e-6), torch.bfloat16)


def test_modules_and_mamba_names():
    norm = ops.RMSNormGated(24, eps=1e-5, group_size=8, norm_before_gate=False)
    assert list(norm.state_dict()) == ["weight"] and norm.bias is None
    ln = ops.LayerNormGated(24, group_size=8)
    assert list(ln.state_dict()) == ["weight", "bias"]
    assert torch.equal(ln.weight, torch.ones(24)) and torch.equal(ln.bias, torch.zeros(24))
    x, z = rand(3, 24), rand(3, 24)
    assert_close(norm(x, z), explicit(x, norm.weight, None, z, 8, False, True, 1e-5), torch.float32)
    assert_close(ln(x, z), explicit(x, ln.weight, ln.bias, z, 8, True, False, 1e-5), torch.float32)
    w, b = rand(24), rand(24)
    assert_close(ops.rmsnorm_fn(x, w, b, z, group_size=12), explicit(x, w, b, z, 12, True, True, 1e-6),
                 torch.float32)
    assert_close(ops.layernorm_fn(x, w, b), explicit(x, w, b, None, None, True, False, 1e-6), torch.float32)


@pytest.mark.parametrize("bad, error, words", [
    (dict(x=torch.randint(0, 3, (2, 8))), TypeError, ["x", "dtype", "int64"]),
    (dict(weight=torch.randn(9)), ValueError, ["weight", "(8)", "(9,)"]),
    (dict(bias=torch.randn(4)), ValueError, ["bias", "(8)"]),
    (dict(z=torch.randn(2, 4)), ValueError, ["z", "(2, 8)", "(2, 4)"]),
    (dict(group_size=3), ValueError, ["group_size", "8", "3"]),
    (dict(group_size=0), ValueError, ["group_size", "positive"]),
])
def test_bad_input_is_named(bad, error, words):
    args = dict(x=torch.randn(2, 8), weight=torch.randn(8), bias=None, z=torch.randn(2, 8), group_size=None)
    args.update(bad)
    with pytest.raises(error) as info:
        ops.gated_rms_norm(args["x"], args["weight"], args["bias"], args["z"], group_size=args["group_size"])
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_torch_compile_matches_eager():
    def f(x, z, w):
        y = ops.rmsnorm_fn(x, w, None, z, group_size=4, norm_before_gate=False)
        return ops.layernorm_fn(y, w, w, z, norm_before_gate=True) * 2

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for L in (3, 10):
        leaves = [t.requires_grad_() for t in (rand(2, L, 16), rand(2, L, 16), rand(16))]
        out = compiled(*leaves)
        assert_close(out, f(*leaves).detach().double(), torch.float32, "compiled")
        out.sum().backward()
        assert leaves[1].grad is not None and torch.isfinite(leaves[1].grad).all()
