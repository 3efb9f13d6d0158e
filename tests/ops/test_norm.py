"""fused_layer_norm / layer_norm_fn / rms_norm_fn / RMSNorm on every backend against the float64
reference and an independent formulation (F.layer_norm, explicit RMS): outputs, residual_out
dtype rules, gradients, mamba_ssm return forms, bad input, torch.compile."""
import pytest
import torch
import torch.nn.functional as F

import ssm.ops as ops
from ssm.ops import _kernels, norm
from ssm.ops.python import reference
from tests.ops.harness import DTYPES, assert_close, backends, device_of, rand, to64, use_backend

SHAPES = [(1, 1, 8), (2, 5, 7), (3, 9, 33), (1, 17, 257)]  # (B, L, N)
OPTIONS = ["plain", "residual", "residual+fp32", "fp32-no-residual", "no-bias", "noncontig"]


def independent(x, w, b, residual, is_rms, eps):
    """The same norm written with F.layer_norm / an explicit RMS, float64."""
    s = x.double() + (0 if residual is None else residual.double())
    if is_rms:
        y = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps) * w.double()
        y = y if b is None else y + b.double()
    else:
        y = F.layer_norm(s, s.shape[-1:], w.double(), None if b is None else b.double(), eps)
    return y, s


def make(shape, dtype, device, option):
    B, L, N = shape
    nc = option == "noncontig"
    x = rand(B, L, N, dtype=dtype, device=device, noncontig=nc)
    w = rand(N, device=device) * 0.5 + 1
    b = None if option == "no-bias" else rand(N, device=device)
    residual = rand(B, L, N, dtype=dtype, device=device, noncontig=nc) if option in (
        "residual", "residual+fp32", "noncontig") else None
    if option == "residual+fp32":
        residual = residual.float()
    return x, w, b, residual


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("is_rms", [False, True], ids=["ln", "rms"])
def test_forward_matches_reference(backend, dtype, shape, option, is_rms):
    x, w, b, residual = make(shape, dtype, device_of(backend), option)
    in_fp32 = option in ("residual+fp32", "fp32-no-residual")
    with use_backend(backend):
        y, res = ops.fused_layer_norm(x, w, b, residual, is_rms=is_rms, eps=1e-5, prenorm=True,
                                      residual_in_fp32=in_fp32)
        y_only = ops.fused_layer_norm(x, w, b, residual, is_rms=is_rms, prenorm=False, residual_in_fp32=in_fp32)
    ref_y, ref_res = reference.fused_layer_norm(*to64(x, w, b, residual), is_rms=is_rms, eps=1e-5, prenorm=True)
    ind_y, ind_s = independent(x, w, b, residual, is_rms, 1e-5)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, ref_y, dtype, "y vs reference")
    assert_close(y, ind_y, dtype, "y vs F.layer_norm / explicit RMS")
    assert torch.equal(y_only, y)
    want = residual.dtype if residual is not None else torch.float32 if in_fp32 else dtype
    assert res.dtype == want
    assert_close(res, ind_s, want, "residual_out")
    if residual is None and want == dtype:
        assert res is x, "trivial case returns x itself as residual"


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("option", ["plain", "residual", "residual+fp32", "fp32-no-residual", "noncontig"])
@pytest.mark.parametrize("is_rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("prenorm", [False, True])
def test_gradients_match_reference(backend, dtype, option, is_rms, prenorm):
    x, w, b, residual = make((2, 6, 45), dtype, device_of(backend), option)
    in_fp32 = option in ("residual+fp32", "fp32-no-residual")
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b, residual)]
    with use_backend(backend):
        out = ops.fused_layer_norm(*leaves, is_rms=is_rms, prenorm=prenorm, residual_in_fp32=in_fp32)
        outs = out if prenorm else (out,)
        grads = [torch.randn_like(o) for o in outs]
        torch.autograd.backward(outs, grads)  # the forced backend runs the backward too
    ref_leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b, residual)]
    ry, rs = independent(*ref_leaves, is_rms, 1e-5)
    torch.autograd.backward([ry, rs][:len(outs)], [g.double() for g in grads])
    for name, got, want in zip(("dx", "dweight", "dbias", "dresidual"), leaves, ref_leaves):
        if got is not None:
            assert got.grad is not None and got.grad.dtype == got.dtype, name
            assert_close(got.grad, want.grad, dtype, name, factor=2.0)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 700, 1000), (1, 33, 4096), (1, 5, 8192), (1, 3, 8200)])  # (B, L, N)
@pytest.mark.parametrize("option", ["residual+fp32", "no-bias"])
@pytest.mark.parametrize("is_rms", [False, True], ids=["ln", "rms"])
def test_gradients_wide_rows(backend, dtype, shape, option, is_rms):
    """Rows of 8-feature packs (a partly used last warp, more rows than resident blocks and than
    partial sums, the widest row in registers) and one wider than that, forward and backward."""
    x, w, b, residual = make(shape, dtype, device_of(backend), option)
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b, residual)]
    with use_backend(backend):
        y, res = ops.fused_layer_norm(*leaves, is_rms=is_rms, prenorm=True, residual_in_fp32=True)
        grads = [torch.randn_like(y), torch.randn_like(res)]
        torch.autograd.backward([y, res], grads)
    ref_leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b, residual)]
    ry, rs = independent(*ref_leaves, is_rms, 1e-5)
    torch.autograd.backward([ry, rs], [g.double() for g in grads])
    assert_close(y, ry.detach(), dtype, "y")
    assert_close(res, rs.detach(), torch.float32, "residual_out")
    for name, got, want in zip(("dx", "dweight", "dbias", "dresidual"), leaves, ref_leaves):
        if got is not None:
            assert_close(got.grad, want.grad, dtype, name, factor=2.0)


@pytest.mark.parametrize("backend", backends())
def test_long_rows_many_tokens(backend):
    x, w, b, residual = make((1, 4097, 96), torch.bfloat16, device_of(backend), "residual")
    leaves = [t.clone().requires_grad_() for t in (x, w, b, residual)]
    with use_backend(backend):
        y, res = ops.fused_layer_norm(*leaves, is_rms=True, prenorm=True, residual_in_fp32=True)
        dy = torch.randn_like(y)
        y.backward(dy)
    ref_leaves = [t.detach().double().requires_grad_() for t in (x, w, b, residual)]
    ref_y, _ = independent(*ref_leaves, True, 1e-5)
    ref_y.backward(dy.double())
    assert_close(y, ref_y.detach(), torch.bfloat16)
    for name, got, want in zip(("dx", "dweight", "dbias", "dresidual"), leaves, ref_leaves):
        assert_close(got.grad, want.grad, torch.bfloat16, name, factor=2.0)


# ---- mamba_ssm surface -------------------------------------------------------------------------

@pytest.mark.parametrize("is_rms", [False, True], ids=["ln", "rms"])
def test_layer_norm_fn_return_forms(is_rms):
    x, w, b, residual = make((2, 3, 16), torch.bfloat16, "cpu", "residual")
    w1, b1, x1 = rand(16), rand(16), rand(2, 3, 16, dtype=torch.bfloat16)
    fn = ops.rms_norm_fn if is_rms else (lambda *a, **k: ops.layer_norm_fn(*a, **k))
    y = fn(x, w, b)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.bfloat16
    y, res = fn(x, w, b, residual=residual, prenorm=True)
    assert res.dtype == residual.dtype
    y, y1 = fn(x, w, b, x1=x1, weight1=w1, bias1=b1)
    y, y1, res = fn(x, w, b, residual=residual, x1=x1, weight1=w1, bias1=b1, prenorm=True)
    ref = (ops.rms_norm_ref if is_rms else ops.layer_norm_ref)(
        *to64(x, w, b), residual=residual.double(), x1=x1.double(), weight1=w1.double(), bias1=b1.double(),
        eps=1e-6, prenorm=True)
    for got, want, name in zip((y, y1, res), ref, ("y", "y1", "residual")):
        assert_close(got, want, torch.bfloat16, name)
    assert_close(y, independent(x + x1.float(), w, b, residual, is_rms, 1e-6)[0], torch.bfloat16, "y vs independent")


def test_layer_norm_fn_dropout_and_rowscale():
    x, w, b, residual = make((2, 7, 24), torch.float32, "cpu", "residual")
    rowscale = torch.rand(2, 7) + 0.5
    y, res, mask, mask1 = ops.layer_norm_fn(x, w, b, residual, dropout_p=0.3, rowscale=rowscale, prenorm=True,
                                            return_dropout_mask=True)
    assert mask.dtype == torch.bool and mask1 is None and 0 < mask.float().mean() < 1
    ry, rres = ops.layer_norm_ref(*to64(x, w, b), residual.double(), dropout_p=0.3, rowscale=rowscale.double(),
                                  prenorm=True, dropout_mask=mask)
    assert_close(y, ry, torch.float32, "y")
    assert_close(res, rres, torch.float32, "residual")
    leaves = [t.clone().requires_grad_() for t in (x, w, b, residual)]
    y, mask, _ = ops.layer_norm_fn(*leaves, dropout_p=0.3, rowscale=rowscale, return_dropout_mask=True)
    y.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves)
    zeros = leaves[0].grad[~mask]
    assert torch.equal(zeros, torch.zeros_like(zeros)), "dropped elements get no gradient"


def test_rmsnorm_module():
    norm = ops.RMSNorm(20, eps=1e-5, dropout_p=0.1, dtype=torch.float32)
    assert list(norm.state_dict()) == ["weight"] and norm.bias is None
    assert torch.equal(norm.weight, torch.ones(20))
    norm.weight.data.normal_()
    norm.eval()
    x, residual = rand(3, 4, 20), rand(3, 4, 20)
    y, res = norm(x, residual=residual, prenorm=True, residual_in_fp32=True)
    assert_close(y, independent(x, norm.weight, None, residual, True, 1e-5)[0], torch.float32)
    norm.train()
    assert norm(x).shape == x.shape


# ---- bad input, compile ------------------------------------------------------------------------

@pytest.mark.parametrize("bad, error, words", [
    (dict(x=torch.randint(0, 3, (2, 8))), TypeError, ["x", "dtype", "int64"]),
    (dict(weight=torch.randn(7)), ValueError, ["weight", "(8)", "(7,)"]),
    (dict(bias=torch.randn(2, 8)), ValueError, ["bias", "(8)", "(2, 8)"]),
    (dict(residual=torch.randn(3, 8)), ValueError, ["residual", "(2, 8)", "(3, 8)"]),
    (dict(weight="w"), TypeError, ["weight", "str"]),
    (dict(x=torch.tensor(1.0)), ValueError, ["x", "dimension"]),
])
def test_bad_input_is_named(bad, error, words):
    args = dict(x=torch.randn(2, 8), weight=torch.randn(8), bias=torch.randn(8), residual=None)
    args.update(bad)
    with pytest.raises(error) as info:
        ops.fused_layer_norm(args["x"], args["weight"], args["bias"], args["residual"])
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


@pytest.mark.parametrize("bad, error, word", [
    (dict(rowscale=torch.rand(3)), ValueError, "rowscale"),
    (dict(x1=torch.randn(2, 9)), ValueError, "x1"),
    (dict(bias1=torch.randn(8)), ValueError, "bias1"),
    (dict(dropout_p=1.5), ValueError, "dropout_p"),
])
def test_bad_extras_are_named(bad, error, word):
    with pytest.raises(error, match=word):
        ops.layer_norm_fn(torch.randn(2, 8), torch.randn(8), None, **bad)


def test_torch_compile_matches_eager():
    def f(x, w, b, residual):
        y, res = ops.fused_layer_norm(x, w, b, residual, is_rms=False, prenorm=True)
        z = ops.rms_norm_fn(y, w, None, residual=res, prenorm=False, residual_in_fp32=True)
        return ops.layer_norm_fn(z, w, b) * 2, res

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for L in (5, 12):
        leaves = [t.requires_grad_() for t in (rand(2, L, 24), rand(24), rand(24), rand(2, L, 24))]
        out, res = compiled(*leaves)
        want, want_res = f(*leaves)
        assert_close(out, want.detach().double(), torch.float32, "compiled y")
        assert_close(res, want_res.detach().double(), torch.float32, "compiled residual")
        out.sum().backward()
        assert leaves[0].grad is not None and torch.isfinite(leaves[0].grad).all()


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("is_rms", [False, True])
def test_half_weights_without_cast_nodes(backend, is_rms):
    """bf16 weight / bias reach the op as they are under autograd (no cast node per call: the op casts through a
    kept copy), their gradients come back in bf16, and equal those of weights cast to float32 by the caller."""
    dev = device_of(backend)
    x, res = rand(64, 48, device=dev).bfloat16(), rand(64, 48, device=dev)
    w, b = rand(48, device=dev).bfloat16(), rand(48, device=dev).bfloat16()
    dy = rand(64, 48, device=dev).bfloat16()

    def run(cast):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        xl, wl, bl = leaves
        with use_backend(backend):
            y, r = ops.fused_layer_norm(xl, cast(wl), cast(bl), res, is_rms, 1e-5, True, True)
        (y.float() * dy.float()).sum().backward()
        return y, leaves
    y, (xl, wl, bl) = run(lambda t: t)
    names, todo = [], [y.grad_fn]
    while todo:  # every node of y's graph
        node = todo.pop()
        names.append(type(node).__name__)
        todo += [f for f, _ in node.next_functions if f is not None]
    assert not [n for n in names if n.startswith("ToCopy")], f"a cast node: {names}"
    assert wl.grad.dtype == torch.bfloat16 and bl.grad.dtype == torch.bfloat16
    y32, (xc, wc, bc) = run(lambda t: t.float())
    assert torch.equal(y, y32)
    for got, want in ((xl.grad, xc.grad), (wl.grad, wc.grad), (bl.grad, bc.grad)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("option", ["plain", "residual", "residual+fp32", "fp32-no-residual", "no-bias"])
@pytest.mark.parametrize("prenorm", [False, True])
def test_planned_autograd_call_equals_general_path(backend, dtype, option, prenorm, monkeypatch):
    """A repeated call with autograd (metadata seen before) runs through the plan (_PlannedNorm): its outputs and
    every gradient equal, bitwise, those of the first call (the general path) on the same inputs; bf16 weights."""
    monkeypatch.setattr(norm, "_plans", _kernels.PlanCache())  # (no plan from an earlier test)
    x, w, b, residual = make((2, 6, 45), dtype, device_of(backend), option)
    w, b = w.to(dtype), None if b is None else b.to(dtype)
    in_fp32 = option in ("residual+fp32", "fp32-no-residual")
    dys = None

    def run():
        nonlocal dys
        leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b, residual)]
        with use_backend(backend):
            out = ops.fused_layer_norm(*leaves, is_rms=option == "plain", prenorm=prenorm, residual_in_fp32=in_fp32)
        outs = out if prenorm else (out,)
        dys = dys or [torch.randn_like(o) for o in outs]
        torch.autograd.backward([o for o in outs if o.requires_grad], [g for o, g in zip(outs, dys) if o.requires_grad])
        return outs, leaves
    (want, want_leaves), (got, got_leaves) = run(), run()
    assert type(want[0].grad_fn).__name__ != "_PlannedNormBackward", "the first call must take the general path"
    if backend != "reference":
        assert type(got[0].grad_fn).__name__ == "_PlannedNormBackward", type(got[0].grad_fn).__name__
    for g, w_ in zip(got, want):
        assert torch.equal(g, w_) and g.dtype == w_.dtype and g.shape == w_.shape
    for name, g, w_ in zip(("dx", "dweight", "dbias", "dresidual"), got_leaves, want_leaves):
        if g is None:
            continue
        assert g.grad.dtype == w_.grad.dtype, name
        if backend == "cuda" and name in ("dweight", "dbias"):
            # (CUDA sums the weight gradients' row-block partials with float atomics, in any order: the general path
            # itself differs between runs by a float32 reordering, then at most one rounding to the weight's dtype)
            ulp = 2.0 ** -7 if g.dtype == torch.bfloat16 else 1e-5
            diff = (g.grad.float() - w_.grad.float()).abs()
            assert (diff <= ulp * w_.grad.float().abs() + 1e-5 * w_.grad.float().abs().max()).all(), name
        else:
            assert torch.equal(g.grad, w_.grad), name
