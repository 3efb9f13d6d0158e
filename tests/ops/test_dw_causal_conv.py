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
    (2, 3, 1000, 4),  # 16-byte rows over several warps: the vector halo loads at warp edges
    (1, 2, 2200, 3),  # two tiles of the register kernels
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


def option_flags(options):
    return dict(bias=options in ("bias+silu", "all"), seq=options in ("seq_idx", "all"),
                init=options in ("init+final", "all"), noncontig=options in ("noncontig", "all"))


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("options", ["plain", "bias+silu", "seq_idx", "init+final", "all", "noncontig"])
def test_gradients_match_reference(backend, dtype, shape, options):
    activation = None if options in ("plain", "init+final") else "silu"
    final = options in ("init+final", "all", "seq_idx")
    x, w, b, seq_idx, init = make_inputs(*shape, dtype, device_of(backend), **option_flags(options))
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b, init)]
    with use_backend(backend):
        out = ops.dw_causal_conv(leaves[0], leaves[1], leaves[2], activation, seq_idx=seq_idx,
                                 initial_states=leaves[3], return_final_states=final)
        outs = out if final else (out,)
        grads = [torch.randn_like(o) for o in outs]
        torch.autograd.backward(outs, grads)  # the forced backend runs the backward too
    ref_leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b, init)]
    ref = reference.dw_causal_conv(ref_leaves[0], ref_leaves[1], ref_leaves[2], activation, seq_idx=seq_idx,
                                   initial_states=ref_leaves[3], return_final_states=final)
    torch.autograd.backward(ref if final else (ref,), [g.double() for g in grads])
    for name, got, want in zip(("dx", "dweight", "dbias", "dinitial_states"), leaves, ref_leaves):
        if got is not None:
            assert got.grad is not None and got.grad.dtype == got.dtype, name
            assert_close(got.grad, want.grad, dtype, name, factor=2.0)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[5], SHAPES[6]])
@pytest.mark.parametrize("unit_mid", [False, True])
def test_repeated_call_gradients_match_reference(backend, dtype, shape, unit_mid):
    """The second call of a signature takes the planned autograd path (conv._make_grad_plan)."""
    x, w, b, _, _ = make_inputs(*shape, dtype, device_of(backend), bias=True, seq=False, init=False, noncontig=False)
    w = w[:, None, :] if unit_mid else w
    for _ in range(2):
        leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
        with use_backend(backend):
            out = ops.dw_causal_conv(*leaves, "silu")
            dy = torch.randn_like(out)
            out.backward(dy)
    ref_leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref = reference.dw_causal_conv(ref_leaves[0], ref_leaves[1].reshape(w.shape[0], -1), ref_leaves[2], "silu")
    ref.backward(dy.double())
    assert_close(out, ref.detach(), dtype, "y")
    for name, got, want in zip(("dx", "dweight", "dbias"), leaves, ref_leaves):
        assert got.grad.shape == got.shape and got.grad.dtype == got.dtype, name
        assert_close(got.grad, want.grad, dtype, name, factor=2.0)


@pytest.mark.parametrize("backend", backends())
def test_long_sequence(backend):
    x, w, b, _, _ = make_inputs(1, 4, 4099, 4, torch.bfloat16, device_of(backend), bias=True, seq=False,
                                init=False, noncontig=False)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    with use_backend(backend):
        out = ops.dw_causal_conv(*leaves, "silu")
        dy = torch.randn_like(out)
        out.backward(dy)
    ref_leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref = reference.dw_causal_conv(*ref_leaves, "silu")
    ref.backward(dy.double())
    assert_close(out, ref.detach(), torch.bfloat16)
    for name, got, want in zip(("dx", "dweight", "dbias"), leaves, ref_leaves):
        assert_close(got.grad, want.grad, torch.bfloat16, name, factor=2.0)


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


# ---- decode update ------------------------------------------------------------------------------

def make_state(Bs, D, S, dtype, device, channels_last):
    """A conv state (Bs, D, S); channels-last like Mamba-2's (allocated (Bs, S, D), transposed)."""
    if channels_last:
        return rand(Bs, S, D, dtype=dtype, device=device).transpose(1, 2)
    return rand(Bs, D, S, dtype=dtype, device=device)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
# B,D,L,W,S; D 70 with L 1: the one-token path's channel blocks of 64 and a partial one; S 4 with L 1: Mamba-1's
# cache rows (the CUDA row4 kernel: W 4, 3, 2; 130 channels: a partial second block of 128)
@pytest.mark.parametrize("shape", [(1, 3, 1, 4, 3), (2, 5, 1, 4, 6), (3, 8, 3, 3, 2), (2, 7, 5, 2, 4), (2, 70, 1, 4, 5),
                                   (3, 130, 1, 4, 4), (2, 9, 1, 3, 4), (4, 5, 1, 2, 4)])
@pytest.mark.parametrize("options", ["plain", "bias+silu", "indices", "channels_last", "x2d", "all"])
def test_update_matches_reference(backend, dtype, shape, options):
    B, D, L, W, S = shape
    device = device_of(backend)
    S = max(S, W - 1)
    indexed = options in ("indices", "all")
    Bs = B + 2 if indexed else B
    x = rand(B, D, dtype=dtype, device=device) if options == "x2d" else rand(B, D, L, dtype=dtype, device=device)
    state = make_state(Bs, D, S, dtype, device, options in ("channels_last", "all"))
    w = rand(D, W, device=device, scale=0.5)
    b = rand(D, device=device) if options in ("bias+silu", "all") else None
    act = "silu" if options in ("bias+silu", "all") else None
    idx = torch.randperm(Bs, device=device)[:B].to(torch.int32) if indexed else None
    if indexed and B > 1:
        idx[0] = -1  # a padding row
    ref_state = state.double().clone()
    with use_backend(backend):
        y = ops.dw_causal_conv_update(x, state, w, b, act, conv_state_indices=idx)
    ref = reference.dw_causal_conv_update(x.double(), ref_state, w.double(), None if b is None else b.double(), act,
                                          conv_state_indices=idx)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, ref, dtype, "y")
    assert_close(state, ref_state, dtype, "conv_state")
    if indexed and B > 1:
        assert torch.equal(y[0], torch.zeros_like(y[0])), "padding row gives zeros"


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("W", [2, 4, 5])
def test_stepwise_update_equals_parallel_forward(backend, dtype, W):
    B, D, L = 2, 6, 11
    device = device_of(backend)
    x = rand(B, D, L, dtype=dtype, device=device)
    w, b, init = rand(D, W, device=device, scale=0.5), rand(D, device=device), rand(B, D, W - 1, dtype=dtype,
                                                                                  device=device)
    state = init.transpose(1, 2).clone(memory_format=torch.contiguous_format).transpose(1, 2)  # channels-last
    with use_backend(backend):
        steps = [ops.dw_causal_conv_update(x[:, :, t], state, w, b, "silu") for t in range(L - 3)]
        steps.append(ops.causal_conv1d_update(x[:, :, L - 3:], state, w, b, "silu"))
    y_steps = torch.cat([s.unsqueeze(-1) for s in steps[:-1]] + [steps[-1]], -1)
    ref, final = reference.dw_causal_conv(*to64(x, w, b), "silu", initial_states=init.double(),
                                          return_final_states=True)
    assert_close(y_steps, ref, dtype, "stepwise y", factor=2.0)
    assert_close(state, final, dtype, "state after the steps")


def circular_loop(x, state, w, b, silu, cache_seqlens, idx):
    """causal_conv1d's circular-buffer update written as a loop over rows and tokens, float64."""
    B, D, L = x.shape
    W, S = w.shape[1], state.shape[2]
    y = torch.zeros(B, D, L, dtype=torch.float64)
    for bi in range(B):
        row = bi if idx is None else int(idx[bi])
        if row < 0:
            continue
        for t in range(L):
            pos = int(cache_seqlens[bi]) + t
            hist = [state[row, :, (pos - W + 1 + k) % S] for k in range(W - 1)]
            window = torch.stack(hist + [x[bi, :, t].double()], -1)
            out = (window * w.double()).sum(-1) + (0 if b is None else b.double())
            y[bi, :, t] = torch.nn.functional.silu(out) if silu else out
            state[row, :, pos % S] = x[bi, :, t].double()
    return y


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 5, 1, 4, 3), (3, 4, 3, 4, 8), (2, 3, 2, 3, 5), (2, 3, 7, 3, 4)])  # B,D,L,W,S
@pytest.mark.parametrize("indexed", [False, True])
def test_circular_update_with_cache_seqlens(backend, dtype, shape, indexed):
    B, D, L, W, S = shape
    device = device_of(backend)
    Bs = B + 1 if indexed else B
    x, state = rand(B, D, L, dtype=dtype, device=device), make_state(Bs, D, S, dtype, device, indexed)
    w, b = rand(D, W, device=device, scale=0.5), rand(D, device=device)
    seqlens = torch.randint(0, 3 * S, (B,), device=device, dtype=torch.int32)
    idx = torch.randperm(Bs, device=device)[:B].to(torch.int32) if indexed else None
    if indexed:
        idx[-1] = -1
    ref_state = state.double().cpu().clone()  # a copy on every backend: the loop below updates it in place
    with use_backend(backend):
        y = ops.causal_conv1d_update(x, state, w, b, "silu", cache_seqlens=seqlens, conv_state_indices=idx)
    ref = circular_loop(x.cpu(), ref_state, w.cpu(), b.cpu(), True, seqlens.cpu(), None if idx is None else idx.cpu())
    assert_close(y, ref, dtype, "y")
    assert_close(state, ref_state, dtype, "conv_state")


@pytest.mark.parametrize("bad, error, words", [
    (dict(x=torch.randn(2)), ValueError, ["x", "2-d or 3-d"]),
    (dict(conv_state=torch.randn(2, 4, 1)), ValueError, ["conv_state", ">= W-1 = 2"]),
    (dict(conv_state=torch.randn(3, 4, 3)), ValueError, ["conv_state", "batch 2"]),
    (dict(conv_state=torch.randn(2, 5, 3)), ValueError, ["conv_state", "(*, 4, *)"]),
    (dict(weight=torch.randn(5, 3)), ValueError, ["weight", "(5, 3)"]),
    (dict(conv_state_indices=torch.zeros(2)), TypeError, ["conv_state_indices", "float32"]),
    (dict(conv_state_indices=torch.zeros(3, dtype=torch.int32)), ValueError, ["conv_state_indices", "(2)"]),
    (dict(cache_seqlens=torch.zeros(1, dtype=torch.int32)), ValueError, ["cache_seqlens", "(2)"]),
    (dict(activation="gelu"), ValueError, ["activation", "gelu"]),
])
def test_update_bad_input_is_named(bad, error, words):
    args = dict(x=torch.randn(2, 4), conv_state=torch.randn(2, 4, 3), weight=torch.randn(4, 3), activation=None,
                conv_state_indices=None, cache_seqlens=None)
    args.update(bad)
    with pytest.raises(error) as info:
        ops.causal_conv1d_update(args["x"], args["conv_state"], args["weight"], None, args["activation"],
                                 cache_seqlens=args["cache_seqlens"], conv_state_indices=args["conv_state_indices"])
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_torch_compile_matches_eager():
    def f(x, w, b, state, step):
        y = ops.dw_causal_conv(x, w, b, "silu")
        return y * 2, ops.dw_causal_conv_update(step, state, w, b, "silu")

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for L in (6, 13):
        x, w, b, step = rand(2, 5, L), rand(5, 4), rand(5), rand(2, 5)
        state = rand(2, 5, 3)
        state_eager = state.clone()
        (y, ys) = compiled(x.requires_grad_(), w, b, state, step)
        (want, want_s) = f(x, w, b, state_eager, step)
        assert_close(y, want.detach().double(), torch.float32, "compiled conv")
        assert_close(ys, want_s.double(), torch.float32, "compiled update")
        assert torch.equal(state, state_eager), "the compiled update mutates conv_state like eager"
        y.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.cuda
@pytest.mark.parametrize("ring", [False, True])
def test_update_is_cuda_graph_capturable(ring):
    """No host sync inside the update: captured once, a replay equals the eager call."""
    B, D, W, S = 3, 16, 4, 6
    state = make_state(B + 1, D, S, torch.float16, "cuda", True)
    w, b, x = rand(D, W, device="cuda"), rand(D, device="cuda"), rand(B, D, dtype=torch.float16, device="cuda")
    idx = torch.tensor([2, -1, 0], dtype=torch.int32, device="cuda")
    seqlens = torch.tensor([5, 1, 9], dtype=torch.int32, device="cuda") if ring else None
    eager_state = state.clone()
    want = ops.causal_conv1d_update(x, eager_state, w, b, "silu", cache_seqlens=seqlens, conv_state_indices=idx)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, on a copy
        ops.causal_conv1d_update(x, state.clone(), w, b, "silu", cache_seqlens=seqlens, conv_state_indices=idx)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = ops.causal_conv1d_update(x, state, w, b, "silu", cache_seqlens=seqlens, conv_state_indices=idx)
    graph.replay()
    torch.cuda.synchronize()
    assert_close(y, want.double(), torch.float16, "replayed y")
    assert torch.equal(state, eager_state), "the replay updates conv_state like the eager call"


@pytest.mark.cuda
def test_mamba1_cache_update_runs_the_row4_kernel():
    """One token on Mamba-1's cache rows (B, D, 4) takes conv_update_row4_kernel, and it matches the reference."""
    B, D, W = 64, 1536, 4
    state = rand(B, D, W, dtype=torch.bfloat16, device="cuda")
    w, b, x = rand(D, W, device="cuda", scale=0.5), rand(D, device="cuda"), rand(B, D, dtype=torch.bfloat16, device="cuda")
    ref_state = state.double().clone()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        y = ops.causal_conv1d_update(x, state, w, b, "silu")
        torch.cuda.synchronize()
    assert any("conv_update_row4_kernel" in e.key for e in prof.key_averages())
    ref = reference.dw_causal_conv_update(x.double(), ref_state, w.double(), b.double(), "silu")
    assert_close(y, ref, torch.bfloat16, "y")
    assert_close(state, ref_state, torch.bfloat16, "conv_state")
