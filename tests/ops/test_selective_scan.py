"""selective_scan on every backend against the float64 reference: forward over a grid of shapes
and options, varlen, gradients, a long sequence, torch.compile, bad input."""
import importlib

import pytest
import torch

import ssm.ops as ops
from ssm.ops.python import reference
from tests.ops.harness import DTYPES, assert_close, backends, device_of, rand, rel_err, to64, use_backend

scan_op = importlib.import_module("ssm.ops.selective_scan")  # the module (ssm.ops.selective_scan is the function)

SHAPES = [  # (batch, D, L, N, G); G = 0: B/C shared by all channels (B, N, L)
    (1, 1, 1, 1, 0),
    (2, 5, 7, 3, 0),
    (2, 8, 33, 16, 2),
    (1, 6, 64, 4, 3),
    (3, 17, 19, 5, 1),
    (2, 40, 48, 16, 1),  # N 16, rows 16-byte aligned: the CUDA forward's row kernel (two blocks of channels)
]
OPTIONS = ["plain", "softplus+bias", "z+D", "init+last", "seq_idx", "constant_BC", "constant_B", "noncontig", "all"]


def make_inputs(batch, D, L, N, G, dtype, device, opts, nrows=None):
    """Scan inputs; ``opts`` is a set of option words. dt stays positive, A negative."""
    nc = "noncontig" in opts or "all" in opts
    u = rand(batch, D, L, dtype=dtype, device=device, noncontig=nc)
    if {"softplus+bias", "all"} & opts:
        delta = rand(batch, D, L, dtype=dtype, device=device, noncontig=nc, scale=0.5) - 1.0
    else:
        delta = (torch.rand(batch, D, L, device=device) * 0.5 + 0.01).to(dtype)
    A = -torch.exp(rand(D, N, device=device, scale=0.5))
    shape = (batch, N, L) if G == 0 else (batch, G, N, L)
    const_B = {"constant_BC", "constant_B"} & opts
    B = rand(D, N, device=device) if const_B else rand(*shape, dtype=dtype, device=device, noncontig=nc)
    C = rand(D, N, device=device) if "constant_BC" in opts else rand(*shape, dtype=dtype, device=device, noncontig=nc)
    full = "all" in opts
    Dp = rand(D, device=device) if {"z+D"} & opts or full else None
    z = rand(batch, D, L, dtype=dtype, device=device, noncontig=nc) if {"z+D"} & opts or full else None
    dt_bias = rand(D, device=device, scale=0.3) if {"softplus+bias"} & opts or full else None
    init = rand(nrows or batch, D, N, device=device) if {"init+last"} & opts or full else None
    seq_idx = None
    if {"seq_idx"} & opts or full:
        seq_idx = torch.sort(torch.randint(0, 3, (batch, L), device=device), dim=1).values.to(torch.int32)
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=Dp, z=z, dt_bias=dt_bias, initial_state=init, seq_idx=seq_idx)


def run(fn, inp, softplus, last, cu_seqlens=None):
    return fn(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"], inp["dt_bias"], softplus,
              last, initial_state=inp["initial_state"], seq_idx=inp["seq_idx"], cu_seqlens=cu_seqlens)


def as64(inp):
    return {k: (v.detach().double() if v is not None and v.is_floating_point() else v) for k, v in inp.items()}


def check(out, ref, dtype, last, low=None):
    if last:
        assert out[0].dtype == dtype and out[1].dtype == torch.float32
        close(out[0], ref[0], dtype, "y", low and low[0])
        close(out[1], ref[1], dtype, "last_state", low and low[1])
    else:
        assert out.dtype == dtype
        close(out, ref, dtype, "y", low)


def close(out, ref, dtype, name, low=None):
    """assert_close, or within twice the error of ``low`` (the reference run in the test dtype) when looser."""
    if low is not None and rel_err(out, ref) <= 2 * rel_err(low, ref):
        return
    assert_close(out, ref, dtype, name)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("option", OPTIONS)
def test_forward_matches_reference(backend, dtype, shape, option):
    opts = {option}
    inp = make_inputs(*shape, dtype, device_of(backend), opts)
    softplus = option in ("softplus+bias", "all")
    last = option in ("init+last", "seq_idx", "all")
    with use_backend(backend):
        out = run(ops.selective_scan, inp, softplus, last)
    ref = run(reference.selective_scan, as64(inp), softplus, last)
    # a single element can cancel (B = D = L = N = 1): then the bound is what the reference in the same
    # dtype reaches, twice over, when that is looser than the table's
    low = run(reference.selective_scan, inp, softplus, last) if shape == SHAPES[0] else None
    check(out, ref, dtype, last, low)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cu_seqlens_equals_sequences_one_by_one(backend, dtype):
    D, N, lengths = 6, 5, [0, 3, 0, 9, 1, 12, 0]  # empty sequences first, inside and last
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device=device_of(backend))
    inp = make_inputs(1, D, sum(lengths), N, 2, dtype, device_of(backend), {"all"}, nrows=len(lengths))
    inp["seq_idx"] = None
    with use_backend(backend):
        y, last = run(ops.selective_scan, inp, True, True, cu_seqlens=cu)
        for s, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
            one = {k: v for k, v in inp.items()}
            for k in ("u", "delta", "z"):
                one[k] = inp[k][..., a:b]
            one["B"], one["C"] = inp["B"][..., a:b], inp["C"][..., a:b]
            one["initial_state"] = inp["initial_state"][s:s + 1]
            y1, last1 = run(ops.selective_scan, one, True, True)
            assert_close(y[..., a:b], y1, dtype, f"y of sequence {s}", factor=0.5)
            assert_close(last[s:s + 1], last1, torch.float32, f"last state of sequence {s}")
    ref = run(reference.selective_scan, as64(inp), True, True, cu_seqlens=cu)
    check((y, last), ref, dtype, True)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("option", ["plain", "constant_B", "all"])
@pytest.mark.parametrize("shape", [(2, 6, 23, 4, 2), (1, 37, 150, 5, 0)])  # the second: several chunks and slices
def test_gradients_match_reference(backend, dtype, option, shape):
    inp = make_inputs(*shape, dtype, device_of(backend), {option})
    softplus = option == "all"
    names = [k for k, v in inp.items() if v is not None and v.is_floating_point()]
    leaves = {k: (v.detach().clone().requires_grad_() if k in names else v) for k, v in inp.items()}
    with use_backend(backend):
        y, last = run(ops.selective_scan, leaves, softplus, True)
        dy, dlast = torch.randn_like(y), torch.randn_like(last)
        torch.autograd.backward([y, last], [dy, dlast])
    ref_leaves = {k: (v.detach().double().requires_grad_() if k in names else v) for k, v in inp.items()}
    ry, rlast = run(reference.selective_scan, ref_leaves, softplus, True)
    torch.autograd.backward([ry, rlast], [dy.double(), dlast.double()])
    for k in names:
        got = leaves[k].grad
        assert got is not None and got.dtype == inp[k].dtype, k
        assert_close(got, ref_leaves[k].grad, dtype, f"d{k}", factor=2.0)


def grads_vs_reference(backend, inp, softplus, dtype, cu_seqlens=None, factor=2.0):
    """(y, last state) and their gradients through ``backend`` against float64 reference autograd."""
    names = [k for k, v in inp.items() if v is not None and v.is_floating_point()]
    leaves = {k: (v.detach().clone().requires_grad_() if k in names else v) for k, v in inp.items()}
    with use_backend(backend):
        y, last = run(ops.selective_scan, leaves, softplus, True, cu_seqlens=cu_seqlens)
        dy, dlast = torch.randn_like(y), torch.randn_like(last)
        torch.autograd.backward([y, last], [dy, dlast])
    ref_leaves = {k: (v.detach().double().requires_grad_() if k in names else v) for k, v in inp.items()}
    ry, rlast = run(reference.selective_scan, ref_leaves, softplus, True, cu_seqlens=cu_seqlens)
    torch.autograd.backward([ry, rlast], [dy.double(), dlast.double()])
    check((y, last), (ry, rlast), dtype, True)
    for k in names:
        got = leaves[k].grad
        assert got is not None and got.dtype == inp[k].dtype, k
        assert_close(got, ref_leaves[k].grad, dtype, f"d{k}", factor=factor)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("option", ["plain", "constant_BC", "all"])
@pytest.mark.parametrize("N", [64, 256])
def test_gradients_large_state(backend, option, N):
    inp = make_inputs(2, 3, 45, N, 1, torch.float32, device_of(backend), {option})
    grads_vs_reference(backend, inp, option == "all", torch.float32)


@pytest.mark.parametrize("backend", [p for p in backends() if p.id != "reference"])
@pytest.mark.parametrize("option", ["plain", "all"])
def test_gradients_across_chunks(backend, option):
    # 2085 steps: nine chunks of the CUDA kernels (256 steps), the last one partial
    inp = make_inputs(1, 3, 2085, 5, 0, torch.bfloat16, device_of(backend), {option})
    grads_vs_reference(backend, inp, option == "all", torch.bfloat16)


@pytest.mark.parametrize("backend", [p for p in backends() if p.id != "reference"])
def test_gradients_cu_seqlens_across_chunks(backend):
    lengths = [0, 700, 1500, 0, 1, 299]  # sequences spanning and ending at chunk boundaries, empty ones
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device=device_of(backend))
    inp = make_inputs(1, 2, sum(lengths), 4, 1, torch.float32, device_of(backend), {"all"}, nrows=len(lengths))
    inp["seq_idx"] = None
    grads_vs_reference(backend, inp, True, torch.float32, cu_seqlens=cu)


@pytest.mark.parametrize("backend", [p for p in backends() if p.id != "reference"])
@pytest.mark.parametrize("forward_checkpoints", [True, False])
def test_gradients_with_and_without_forward_checkpoints(backend, forward_checkpoints, monkeypatch):
    # eager autograd: the CUDA forward writes the backward's checkpoints; without, the backward's pre-pass does
    monkeypatch.setattr(scan_op, "FWD_CHECKPOINTS", forward_checkpoints)
    inp = make_inputs(2, 40, 100, 16, 1, torch.bfloat16, device_of(backend), {"all"})
    inp["seq_idx"] = None
    grads_vs_reference(backend, inp, True, torch.bfloat16)


@pytest.mark.cuda
def test_forward_writes_checkpoints_cuda():
    inp = make_inputs(2, 40, 100, 16, 1, torch.bfloat16, torch.device("cuda"), {"plain"})
    args = (inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"])
    _, _, ck = scan_op._fwd_impl(*args, None, None, None, None, None, None, False, False, True)
    assert ck.shape == (2, 7, 16, 40) and ck[:, 1:].isfinite().all()  # (B, chunks of 16 steps, N, D); chunk 0 unused


@pytest.mark.cuda
def test_gradients_long_sequence_cuda():
    inp = make_inputs(1, 2, 16384, 4, 0, torch.bfloat16, torch.device("cuda"), {"all"})
    grads_vs_reference("cuda", inp, True, torch.bfloat16)


@pytest.mark.parametrize("backend", backends())
def test_long_sequence(backend):
    inp = make_inputs(1, 3, 4099, 4, 0, torch.bfloat16, device_of(backend), {"softplus+bias"})
    with use_backend(backend):
        out = run(ops.selective_scan, inp, True, True)
    check(out, run(reference.selective_scan, as64(inp), True, True), torch.bfloat16, True)


def test_mamba_names():
    inp = make_inputs(2, 4, 9, 3, 0, torch.float32, "cpu", {"all"})
    args = (inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"])
    y, last = ops.selective_scan_fn(*args, delta_bias=inp["dt_bias"], delta_softplus=True, return_last_state=True,
                                    initial_state=inp["initial_state"], seq_idx=inp["seq_idx"])
    ref = ops.selective_scan_ref(*to64(*args), delta_bias=inp["dt_bias"].double(), delta_softplus=True,
                                 return_last_state=True, initial_state=inp["initial_state"].double(),
                                 seq_idx=inp["seq_idx"])
    check((y, last), ref, torch.float32, True)


def test_compiled_matches_eager():
    def f(u, delta, A, B, C, D, z):
        y, last = ops.selective_scan(u, delta, A, B, C, D, z, None, True, True)
        return y * 2, last
    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for L in (5, 12):
        inp = make_inputs(2, 4, L, 3, 0, torch.float32, "cpu", {"z+D"})
        args = (inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"])
        for got, want in zip(compiled(*args), f(*args)):
            torch.testing.assert_close(got, want)


GOOD = dict(u=(2, 4, 9), delta=(2, 4, 9), A=(4, 3), B=(2, 3, 9), C=(2, 3, 9))


@pytest.mark.parametrize("bad, error, words", [
    (dict(u=torch.randn(4, 9)), ValueError, ["u", "3-d", "(4, 9)"]),
    (dict(delta=torch.randn(2, 4, 8)), ValueError, ["delta", "(2, 4, 9)", "(2, 4, 8)"]),
    (dict(A=torch.randn(5, 3)), ValueError, ["A", "(4, *)", "(5, 3)"]),
    (dict(A=torch.randn(4, 3, dtype=torch.complex64)), TypeError, ["A", "complex"]),
    (dict(B=torch.randn(2, 3, 3, 9)), ValueError, ["B", "group", "4"]),
    (dict(C=torch.randn(2, 4, 9)), ValueError, ["C", "(2, 3, 9)", "(2, 4, 9)"]),
    (dict(u=torch.randint(0, 3, (2, 4, 9))), TypeError, ["u", "dtype", "int64"]),
    (dict(D=torch.randn(3)), ValueError, ["D", "(4)", "(3,)"]),
    (dict(z=torch.randn(2, 4, 8)), ValueError, ["z", "(2, 4, 9)"]),
    (dict(dt_bias=torch.randn(2, 4)), ValueError, ["dt_bias", "(4)"]),
    (dict(initial_state=torch.randn(2, 4, 4)), ValueError, ["initial_state", "(2, 4, 3)"]),
    (dict(seq_idx=torch.zeros(2, 9)), TypeError, ["seq_idx", "dtype"]),
    (dict(cu_seqlens=torch.tensor([0, 9])), ValueError, ["cu_seqlens", "batch"]),
    (dict(u=torch.randn(1, 4, 9), delta=torch.randn(1, 4, 9), B=torch.randn(1, 3, 9), C=torch.randn(1, 3, 9),
          cu_seqlens=torch.tensor([0, 5, 4, 9])), ValueError, ["cu_seqlens", "nondecreasing"]),
    (dict(u=torch.randn(1, 4, 9), delta=torch.randn(1, 4, 9), B=torch.randn(1, 3, 9), C=torch.randn(1, 3, 9),
          cu_seqlens=torch.tensor([0, 5, 8])), ValueError, ["cu_seqlens", "9"]),
    (dict(B="b"), TypeError, ["B", "str"]),
])
def test_bad_input_is_named(bad, error, words):
    args = {k: torch.randn(*s) for k, s in GOOD.items()}
    args.update(D=None, z=None, dt_bias=None, initial_state=None, seq_idx=None, cu_seqlens=None)
    args.update(bad)
    with pytest.raises(error) as info:
        ops.selective_scan(args["u"], args["delta"], args["A"], args["B"], args["C"], args["D"], args["z"],
                           args["dt_bias"], initial_state=args["initial_state"], seq_idx=args["seq_idx"],
                           cu_seqlens=args["cu_seqlens"])
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"
