"""Tests of the reference ops (ssm.ops.python.reference), the float64 oracle of every kernel.

Each op is checked against an independent formulation written differently:
  * dw_causal_conv        F.conv1d (groups=D) run segment by segment; explicit final windows
  * dw_causal_conv_update a loop of updates == one dw_causal_conv call
  * selective_scan        a float64 numpy token loop (row by row, segment by segment)
  * selective_state_step  iterated == selective_scan / ssd_scan_sequential
  * ssd_chunk_scan        == ssd_scan_sequential and == selective_scan on the Mamba-1 reshape
  * norms                 F.layer_norm / explicit RMS and group formulas
plus low-precision calls against the float64 call on the same values, non-contiguous
inputs, gradcheck in float64, packed-vs-one-by-one and split-with-state-passing consistency.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from ssm.ops.python import reference as R

LOW_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# ||out - ref|| / ||ref|| bound of a low-precision call against the float64 call on the same values
REL_TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
f64 = torch.float64


# ============================================================================================
# helpers
# ============================================================================================

def randn(*shape, dtype=f64):
    return torch.randn(*shape, dtype=f64).to(dtype)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
    out, ref = out.detach().double(), ref.detach().double()
    assert torch.isfinite(out).all(), "non-finite values in the output"
    assert torch.isfinite(ref).all(), "non-finite values in the reference"
    denom = ref.norm().item()
    return (out - ref).norm().item() / (denom if denom > 0 else 1.0)


def assert_rel(out, ref, tol, name="output"):
    err = rel_err(out, ref)
    assert err <= tol, f"{name}: relative error {err:.3g} > {tol:.3g}"


def assert_close64(out, ref, name="output"):
    """Two float64 formulations of the same math: equal to rounding, elementwise (NaN fails)."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    out, ref = out.detach().double(), ref.detach().double()
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10 * scale, msg=lambda m: f"{name}: {m}")


def strided(t):
    """Same values, non-contiguous: every other element of a buffer twice as long (last dim)."""
    if t is None:
        return None
    big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    big[..., ::2] = t
    view = big[..., ::2]
    assert not view.is_contiguous() or t.shape[-1] <= 1
    return view


def transposed(t):
    """Same values, last two dims stored the other way round (e.g. (B, L, D) memory seen as (B, D, L));
    1-D tensors get the strided view instead."""
    if t is None or t.dim() < 2:
        return strided(t)
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def to64(args):
    return {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in args.items()}


def sorted_seq_idx(batch, L, n_max=3):
    """(B, L) int32 nondecreasing segment ids starting at 0 (random boundaries)."""
    steps = (torch.rand(batch, L) < 0.25).to(torch.int32)
    steps[:, 0] = 0
    return steps.cumsum(1).clamp(max=n_max).to(torch.int32)


def np64(t):
    return None if t is None else t.detach().double().cpu().numpy()


def np_softplus(x):
    return np.where(x <= 20.0, np.log1p(np.exp(np.minimum(x, 20.0))), x)


def np_silu(x):
    return x / (1.0 + np.exp(-x))


# ============================================================================================
# independent oracles
# ============================================================================================

def oracle_selective_scan(u, delta, A, B, C, D=None, z=None, dt_bias=None, softplus=False,
                          initial_state=None, seq_idx=None, cu_seqlens=None):
    """Float64 numpy: one row, one segment, one token at a time. Returns (y, last_state) tensors."""
    u, delta, A, B, C, D, z, dt_bias, h_init = map(np64, (u, delta, A, B, C, D, z, dt_bias, initial_state))
    batch, dim, L = u.shape
    N = A.shape[1]
    dt = delta + (0.0 if dt_bias is None else dt_bias[:, None])
    if softplus:
        dt = np_softplus(dt)

    def at(M, b, t):  # the (D, N) matrix of B or C used at row b, token t
        if M.ndim == 2:
            return M
        if M.ndim == 3:
            return np.broadcast_to(M[b, :, t], (dim, N))
        group_of_channel = np.arange(dim) // (dim // M.shape[1])
        return M[b, group_of_channel, :, t]

    # (row, start, end, state before start) for every segment
    segments = []
    if cu_seqlens is not None:
        cu = [int(v) for v in cu_seqlens.tolist()]
        for s in range(len(cu) - 1):
            h0 = h_init[s] if h_init is not None else np.zeros((dim, N))
            segments.append((0, cu[s], cu[s + 1], h0))
    else:
        for b in range(batch):
            ids = [0] * L if seq_idx is None else seq_idx[b].tolist()
            start = 0
            for t in range(1, L + 1):
                if t == L or ids[t] != ids[t - 1]:
                    h0 = h_init[b] if (start == 0 and h_init is not None) else np.zeros((dim, N))
                    segments.append((b, start, t, h0))
                    start = t
    y = np.zeros((batch, dim, L))
    finals = []
    for b, start, end, h0 in segments:
        h = h0.copy()
        for t in range(start, end):
            h = np.exp(dt[b, :, t, None] * A) * h + (dt[b, :, t] * u[b, :, t])[:, None] * at(B, b, t)
            y[b, :, t] = (h * at(C, b, t)).sum(1)
        finals.append((b, h))
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * np_silu(z)
    if cu_seqlens is not None:
        last = np.stack([h for _, h in finals])
    else:
        last = np.stack([[h for b2, h in finals if b2 == b][-1] for b in range(batch)])
    return torch.from_numpy(y), torch.from_numpy(last)


def oracle_conv(x, weight, bias, activation, initial_states=None, seq_idx=None):
    """F.conv1d (groups=D, padding W-1) run on each segment of each row. Returns (y, final_states)."""
    x, weight = x.double(), weight.double()
    bias = None if bias is None else bias.double()
    batch, dim, L = x.shape
    W = weight.shape[1]
    y = torch.zeros(batch, dim, L, dtype=f64)
    final = torch.zeros(batch, dim, W - 1, dtype=f64)
    for b in range(batch):
        ids = [0] * L if seq_idx is None else seq_idx[b].tolist()
        start = 0
        for t in range(1, L + 1):
            if t < L and ids[t] == ids[t - 1]:
                continue
            seg = x[b:b + 1, :, start:t]
            if start == 0 and initial_states is not None:
                prefix = initial_states[b:b + 1].double()
            else:
                prefix = torch.zeros(1, dim, W - 1, dtype=f64)
            padded = torch.cat([prefix, seg], dim=-1)
            out = F.conv1d(padded, weight[:, None, :], bias, groups=dim)
            y[b, :, start:t] = out[0]
            if t == L:
                final[b] = padded[0, :, padded.shape[-1] - (W - 1):]
            start = t
        if L == 0 and initial_states is not None:
            final[b] = initial_states[b]
    if activation in ("silu", "swish"):
        y = F.silu(y)
    return y, final


def ssd_args(batch, L, H, P, G, N, *, D="hp", z=True, dt_bias=True, init=True, dtype=f64, nseq=None):
    """Random arguments of ssd_chunk_scan (A negative, as in Mamba-2)."""
    args = dict(
        X=randn(batch, L, H, P, dtype=dtype),
        dt=randn(batch, L, H, dtype=dtype) * 0.5,
        A=-torch.rand(H, dtype=f64).to(torch.float32 if dtype != f64 else f64) * 2 - 0.1,
        B=randn(batch, L, G, N, dtype=dtype),
        C=randn(batch, L, G, N, dtype=dtype),
    )
    wdtype = torch.float32 if dtype != f64 else f64
    if D == "h":
        args["D"] = torch.randn(H, dtype=f64).to(wdtype)
    elif D == "hp":
        args["D"] = torch.randn(H, P, dtype=f64).to(wdtype)
    if z:
        args["z"] = randn(batch, L, H, P, dtype=dtype)
    if dt_bias:
        args["dt_bias"] = (torch.randn(H, dtype=f64) * 0.5).to(wdtype)
    if init:
        args["initial_states"] = randn(nseq or batch, H, P, N, dtype=wdtype)
    return args


def ssd_to_mamba1(X, dt, A, B, C, D=None, z=None, initial_states=None, dt_bias=None, dt_softplus=False,
                  dt_limit=(0.0, float("inf"))):
    """Mamba-2 arguments as Mamba-1 selective_scan arguments: channel h*P + p, A repeated over p,
    B/C as (B, G, N, L) groups; dt' (bias, softplus, clamp) computed here with explicit formulas."""
    batch, L, H, P = X.shape
    N = B.shape[-1]
    dt = dt.double() + (0.0 if dt_bias is None else dt_bias.double())
    if dt_softplus:
        dt = torch.where(dt <= 20.0, torch.log1p(torch.exp(dt)), dt)
    dt = torch.maximum(torch.minimum(dt, torch.tensor(dt_limit[1], dtype=f64)), torch.tensor(dt_limit[0], dtype=f64))
    m1 = dict(
        u=X.reshape(batch, L, H * P).transpose(1, 2),
        delta=dt.repeat_interleave(P, dim=2).transpose(1, 2),
        A=A.repeat_interleave(P)[:, None].expand(H * P, N),
        B=B.permute(0, 2, 3, 1),
        C=C.permute(0, 2, 3, 1),
    )
    if D is not None:
        m1["D"] = D.repeat_interleave(P) if D.dim() == 1 else D.reshape(H * P)
    if z is not None:
        m1["z"] = z.reshape(batch, L, H * P).transpose(1, 2)
    if initial_states is not None:
        m1["initial_state"] = initial_states.reshape(initial_states.shape[0], H * P, N)
    return m1


def mamba1_y_to_ssd(y, H, P):
    batch, _, L = y.shape
    return y.transpose(1, 2).reshape(batch, L, H, P)


# ============================================================================================
# dw_causal_conv
# ============================================================================================

@pytest.mark.parametrize("W", [1, 2, 4])
@pytest.mark.parametrize("L", [1, 3, 10])
@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("activation", [None, "silu", "swish"])
@pytest.mark.parametrize("has_init", [False, True])
@pytest.mark.parametrize("has_seq_idx", [False, True])
def test_conv_matches_conv1d(W, L, has_bias, activation, has_init, has_seq_idx):
    batch, dim = 2, 5
    x, weight = randn(batch, dim, L), randn(dim, W)
    bias = randn(dim) if has_bias else None
    init = randn(batch, dim, W - 1) if has_init else None
    seq_idx = sorted_seq_idx(batch, L) if has_seq_idx else None
    y, final = R.dw_causal_conv(x, weight, bias, activation, seq_idx=seq_idx, initial_states=init,
                                return_final_states=True)
    y_ref, final_ref = oracle_conv(x, weight, bias, activation, init, seq_idx)
    assert y.dtype == x.dtype and final.dtype == x.dtype
    assert_close64(y, y_ref, "y")
    assert_close64(final, final_ref, "final_states")
    # without return_final_states: y alone, the same
    assert_close64(R.dw_causal_conv(x, weight, bias, activation, seq_idx=seq_idx, initial_states=init), y_ref)


def test_conv_default_activation_is_silu_and_short_final_states():
    batch, dim, W = 2, 3, 4
    x, weight, bias = randn(batch, dim, 2), randn(dim, W), randn(dim)
    init = randn(batch, dim, W - 1)
    y, final = R.dw_causal_conv(x, weight, bias, initial_states=init, return_final_states=True)
    y_ref, _ = oracle_conv(x, weight, bias, "silu", init)
    assert_close64(y, y_ref)
    # L = 2 < W - 1 = 3: the window keeps the last initial state, then the two inputs
    assert_close64(final, torch.cat([init[..., -1:], x], dim=-1))


@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_conv_low_precision(dtype):
    batch, dim, L, W = 2, 7, 19, 4
    x, init = randn(batch, dim, L, dtype=dtype), randn(batch, dim, W - 1, dtype=dtype)
    weight, bias = randn(dim, W, dtype=torch.float32), randn(dim, dtype=torch.float32)
    seq_idx = sorted_seq_idx(batch, L)
    y, final = R.dw_causal_conv(x, weight, bias, "silu", seq_idx=seq_idx, initial_states=init,
                                return_final_states=True)
    y64, final64 = R.dw_causal_conv(x.double(), weight.double(), bias.double(), "silu", seq_idx=seq_idx,
                                    initial_states=init.double(), return_final_states=True)
    assert y.dtype == dtype and final.dtype == dtype
    assert_rel(y, y64, REL_TOL[dtype], "y")
    assert_rel(final, final64, REL_TOL[dtype], "final_states")


def test_conv_noncontiguous():
    batch, dim, L, W = 2, 5, 9, 4
    x, weight, bias, init = randn(batch, dim, L), randn(dim, W), randn(dim), randn(batch, dim, W - 1)
    seq_idx = sorted_seq_idx(batch, L)
    ref = R.dw_causal_conv(x, weight, bias, "silu", seq_idx=seq_idx, initial_states=init, return_final_states=True)
    for view in (strided, transposed):
        out = R.dw_causal_conv(view(x), view(weight), strided(bias), "silu", seq_idx=strided(seq_idx),
                               initial_states=view(init), return_final_states=True)
        assert_close64(out[0], ref[0])
        assert_close64(out[1], ref[1])


def test_conv_packed_equals_one_by_one():
    dim, W = 4, 4
    lengths = [5, 2, 7, 1]
    xs = [randn(1, dim, n) for n in lengths]
    weight, bias = randn(dim, W), randn(dim)
    seq_idx = torch.cat([torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(lengths)])[None]
    y, final = R.dw_causal_conv(torch.cat(xs, -1), weight, bias, "silu", seq_idx=seq_idx, return_final_states=True)
    singles = [R.dw_causal_conv(x, weight, bias, "silu", return_final_states=True) for x in xs]
    assert_close64(y, torch.cat([s[0] for s in singles], -1))
    # the row's final window is the last sequence's own (zeros before its start: it is 1 token long)
    assert_close64(final, singles[-1][1])


@pytest.mark.parametrize("split", [1, 2, 6])
def test_conv_split_with_state_passing(split):
    batch, dim, L, W = 2, 3, 9, 4
    x, weight, bias, init = randn(batch, dim, L), randn(dim, W), randn(dim), randn(batch, dim, W - 1)
    y, final = R.dw_causal_conv(x, weight, bias, "silu", initial_states=init, return_final_states=True)
    y1, mid = R.dw_causal_conv(x[..., :split], weight, bias, "silu", initial_states=init, return_final_states=True)
    y2, final2 = R.dw_causal_conv(x[..., split:], weight, bias, "silu", initial_states=mid, return_final_states=True)
    assert_close64(torch.cat([y1, y2], -1), y)
    assert_close64(final2, final)


def test_conv_gradcheck():
    batch, dim, L, W = 2, 3, 6, 3
    x, weight, bias, init = randn(batch, dim, L), randn(dim, W), randn(dim), randn(batch, dim, W - 1)
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.int32)
    inputs = tuple(t.requires_grad_() for t in (x, weight, bias, init))

    def fn(x, w, b, s):
        return R.dw_causal_conv(x, w, b, "silu", seq_idx=seq_idx, initial_states=s, return_final_states=True)

    assert gradcheck(fn, inputs)
    assert gradcheck(lambda x, w: R.dw_causal_conv(x, w, None, None), inputs[:2])


# ============================================================================================
# dw_causal_conv_update
# ============================================================================================

@pytest.mark.parametrize("extra_state", [0, 3])
@pytest.mark.parametrize("step", [1, 3, "2d"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("has_bias", [False, True])
def test_conv_update_loop_equals_conv(extra_state, step, channels_last, activation, has_bias):
    batch, dim, L, W = 2, 5, 7, 4
    S = W - 1 + extra_state
    x, weight = randn(batch, dim, L), randn(dim, W)
    bias = randn(dim) if has_bias else None
    state0 = randn(batch, dim, S)
    state = transposed(state0.clone()) if channels_last else state0.clone()
    assert channels_last == (not state.is_contiguous())
    ys = []
    if step == "2d":
        for t in range(L):
            y_t = R.dw_causal_conv_update(x[:, :, t], state, weight, bias, activation)
            assert y_t.shape == (batch, dim)
            ys.append(y_t[..., None])
    else:
        for t in range(0, L, step):
            ys.append(R.dw_causal_conv_update(x[:, :, t:t + step], state, weight, bias, activation))
    y_ref, final_ref = R.dw_causal_conv(x, weight, bias, activation, initial_states=state0[..., S - (W - 1):],
                                        return_final_states=True)
    assert_close64(torch.cat(ys, -1), y_ref, "y")
    assert_close64(state[..., S - (W - 1):], final_ref, "state window")
    # the whole stored state is the last S inputs seen
    assert_close64(state, torch.cat([state0, x], -1)[..., L:], "state")


def test_conv_update_state_indices_and_padding():
    batch, n_slots, dim, W, L_new = 3, 5, 4, 4, 2
    weight, bias = randn(dim, W), randn(dim)
    cache = randn(n_slots, dim, W - 1)
    before = cache.clone()
    idx = torch.tensor([3, -1, 1], dtype=torch.int32)
    x = randn(batch, dim, L_new)
    y = R.dw_causal_conv_update(x, cache, weight, bias, "silu", conv_state_indices=idx)
    for b, slot in enumerate(idx.tolist()):
        if slot < 0:
            assert torch.equal(y[b], torch.zeros_like(y[b]))
            continue
        own = before[slot:slot + 1].clone()
        assert_close64(y[b:b + 1], R.dw_causal_conv_update(x[b:b + 1], own, weight, bias, "silu"))
        assert_close64(cache[slot], own[0])
    for slot in (0, 2, 4):  # untouched rows (none written for the padding row)
        assert torch.equal(cache[slot], before[slot])


@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_conv_update_low_precision(dtype):
    batch, dim, W, S = 2, 7, 4, 5
    x, state = randn(batch, dim, 2, dtype=dtype), randn(batch, dim, S, dtype=dtype)
    weight, bias = randn(dim, W, dtype=torch.float32), randn(dim, dtype=torch.float32)
    state64 = state.double()
    y64 = R.dw_causal_conv_update(x.double(), state64, weight.double(), bias.double(), "silu")
    y = R.dw_causal_conv_update(x, state, weight, bias, "silu")
    assert y.dtype == dtype and state.dtype == dtype
    assert_rel(y, y64, REL_TOL[dtype])
    assert torch.equal(state.double(), state64)  # only copies of the inputs: exact


def test_conv_update_gradcheck():
    batch, dim, W, S = 2, 3, 3, 4
    x, state, weight, bias = randn(batch, dim, 2), randn(3, dim, S), randn(dim, W), randn(dim)
    idx = torch.tensor([2, 0])
    inputs = tuple(t.requires_grad_() for t in (x, state, weight, bias))

    def fn(x, s, w, b):
        s = s.clone()
        y = R.dw_causal_conv_update(x, s, w, b, "silu", conv_state_indices=idx)
        return y, s

    assert gradcheck(fn, inputs)


# ============================================================================================
# selective_scan
# ============================================================================================

def scan_args(batch, dim, N, L, layout, G=1, dtype=f64, wdtype=None):
    wdtype = wdtype or dtype
    if layout == "const":
        Bm, Cm = randn(dim, N, dtype=wdtype), randn(dim, N, dtype=wdtype)
    elif layout == "shared":
        Bm, Cm = randn(batch, N, L, dtype=dtype), randn(batch, N, L, dtype=dtype)
    else:
        Bm, Cm = randn(batch, G, N, L, dtype=dtype), randn(batch, G, N, L, dtype=dtype)
    return dict(u=randn(batch, dim, L, dtype=dtype), delta=randn(batch, dim, L, dtype=dtype) * 0.5,
                A=(-torch.rand(dim, N, dtype=f64) * 2 - 0.1).to(wdtype), B=Bm, C=Cm)


@pytest.mark.parametrize("layout", ["const", "shared", "grouped"])
@pytest.mark.parametrize("L", [1, 13])
@pytest.mark.parametrize("has_D,has_z,has_bias,softplus,has_init",
                         list(itertools.product([False, True], repeat=5)))
def test_selective_scan_matches_oracle(layout, L, has_D, has_z, has_bias, softplus, has_init):
    batch, dim, N = 2, 6, 5
    args = scan_args(batch, dim, N, L, layout, G=3)
    opt = {}
    if has_D:
        opt["D"] = randn(dim)
    if has_z:
        opt["z"] = randn(batch, dim, L)
    if has_bias:
        opt["dt_bias"] = randn(dim) * 0.5
    if softplus:
        opt["softplus"] = True
    init = randn(batch, dim, N) if has_init else None
    y, last = R.selective_scan(**args, **opt, return_last_state=True, initial_state=init)
    y_ref, last_ref = oracle_selective_scan(**args, **opt, initial_state=init)
    assert y.dtype == f64 and last.dtype == f64
    assert_close64(y, y_ref, "y")
    assert_close64(last, last_ref, "last_state")
    assert_close64(R.selective_scan(**args, **opt, initial_state=init), y_ref)


def test_selective_scan_seq_idx_matches_oracle():
    batch, dim, N, L = 3, 4, 3, 17
    args = scan_args(batch, dim, N, L, "grouped", G=2)
    init, seq_idx = randn(batch, dim, N), sorted_seq_idx(batch, L)
    opt = dict(D=randn(dim), z=randn(batch, dim, L), dt_bias=randn(dim), softplus=True)
    y, last = R.selective_scan(**args, **opt, return_last_state=True, initial_state=init, seq_idx=seq_idx)
    y_ref, last_ref = oracle_selective_scan(**args, **opt, initial_state=init, seq_idx=seq_idx)
    assert_close64(y, y_ref)
    assert_close64(last, last_ref)


@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("has_init", [False, True])
def test_selective_scan_cu_seqlens(cu_dtype, has_init):
    dim, N = 4, 3
    lengths = [0, 4, 0, 1, 6, 0]  # empty sequences first, inside and last
    L = sum(lengths)
    cu = torch.tensor([0] + list(itertools.accumulate(lengths)), dtype=cu_dtype)
    args = scan_args(1, dim, N, L, "grouped", G=2)
    opt = dict(D=randn(dim), z=randn(1, dim, L), dt_bias=randn(dim), softplus=True)
    init = randn(len(lengths), dim, N) if has_init else None
    y, last = R.selective_scan(**args, **opt, return_last_state=True, initial_state=init, cu_seqlens=cu)
    y_ref, last_ref = oracle_selective_scan(**args, **opt, initial_state=init, cu_seqlens=cu)
    assert last.shape == (len(lengths), dim, N)
    assert_close64(y, y_ref)
    assert_close64(last, last_ref)
    # == the sequences run one by one
    ys = []
    for s, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        one = {k: (v[..., a:b] if k in ("u", "delta", "B", "C") else v) for k, v in args.items()}
        y_s, last_s = R.selective_scan(**one, D=opt["D"], z=opt["z"][..., a:b], dt_bias=opt["dt_bias"],
                                       softplus=True, return_last_state=True,
                                       initial_state=None if init is None else init[s:s + 1])
        ys.append(y_s)
        assert_close64(last[s], last_s[0], f"last state of sequence {s}")
    assert_close64(y, torch.cat(ys, -1))
    # seq_idx marking the same sequences gives the same outputs, and the last sequence's state
    if not has_init:
        seq_idx = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), torch.tensor(lengths))[None]
        y2, last2 = R.selective_scan(**args, **opt, return_last_state=True, seq_idx=seq_idx)
        assert_close64(y2, y)
        assert_close64(last2[0], last[4])


@pytest.mark.parametrize("split", [1, 5, 12])
def test_selective_scan_split_with_state_passing(split):
    batch, dim, N, L = 2, 4, 3, 13
    args = scan_args(batch, dim, N, L, "grouped", G=2)
    opt = dict(D=randn(dim), z=randn(batch, dim, L), dt_bias=randn(dim), softplus=True)
    init = randn(batch, dim, N)
    y, last = R.selective_scan(**args, **opt, return_last_state=True, initial_state=init)

    def part(sl):
        p = {k: (v[..., sl] if k in ("u", "delta", "B", "C") else v) for k, v in args.items()}
        return p, dict(opt, z=opt["z"][..., sl])

    a, oa = part(slice(0, split))
    y1, mid = R.selective_scan(**a, **oa, return_last_state=True, initial_state=init)
    b, ob = part(slice(split, L))
    y2, last2 = R.selective_scan(**b, **ob, return_last_state=True, initial_state=mid)
    assert_close64(torch.cat([y1, y2], -1), y)
    assert_close64(last2, last)


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("layout", ["const", "grouped"])
def test_selective_scan_low_precision(dtype, layout):
    batch, dim, N, L = 2, 8, 5, 21
    args = scan_args(batch, dim, N, L, layout, G=2, dtype=dtype, wdtype=torch.float32)
    opt = dict(D=randn(dim, dtype=torch.float32), z=randn(batch, dim, L, dtype=dtype),
               dt_bias=randn(dim, dtype=torch.float32), softplus=True,
               initial_state=randn(batch, dim, N, dtype=torch.float32), seq_idx=sorted_seq_idx(batch, L))
    y, last = R.selective_scan(**args, **opt, return_last_state=True)
    y64, last64 = R.selective_scan(**to64(args), **to64(opt), return_last_state=True)
    assert y.dtype == dtype and last.dtype == torch.float32
    assert_rel(y, y64, REL_TOL[dtype], "y")
    assert_rel(last, last64, REL_TOL[dtype], "last_state")


def test_selective_scan_noncontiguous():
    batch, dim, N, L = 2, 6, 3, 9
    args = scan_args(batch, dim, N, L, "grouped", G=3)
    opt = dict(D=randn(dim), z=randn(batch, dim, L), dt_bias=randn(dim), softplus=True,
               initial_state=randn(batch, dim, N))
    y, last = R.selective_scan(**args, **opt, return_last_state=True)
    for view in (strided, transposed):
        nc = {k: view(v) for k, v in args.items()}
        nopt = dict(opt, z=view(opt["z"]), initial_state=view(opt["initial_state"]), D=strided(opt["D"]))
        y2, last2 = R.selective_scan(**nc, **nopt, return_last_state=True)
        assert_close64(y2, y)
        assert_close64(last2, last)


@pytest.mark.parametrize("layout", ["const", "shared", "grouped"])
def test_selective_scan_gradcheck(layout):
    batch, dim, N, L = 2, 2, 2, 4
    args = scan_args(batch, dim, N, L, layout, G=2)
    opt = dict(D=randn(dim), z=randn(batch, dim, L), dt_bias=randn(dim), initial_state=randn(batch, dim, N))
    names = list(args) + list(opt)
    values = tuple(t.clone().requires_grad_() for t in list(args.values()) + list(opt.values()))
    seq_idx = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]])

    def fn(*vals):
        kw = dict(zip(names, vals))
        return R.selective_scan(**kw, softplus=True, return_last_state=True, seq_idx=seq_idx)

    assert gradcheck(fn, values)


def test_selective_scan_gradcheck_cu_seqlens():
    dim, N = 2, 2
    args = scan_args(1, dim, N, 5, "shared")
    init = randn(3, dim, N)
    cu = torch.tensor([0, 2, 2, 5])
    values = tuple(t.clone().requires_grad_() for t in list(args.values()) + [init])

    def fn(u, delta, A, B, C, init):
        return R.selective_scan(u, delta, A, B, C, return_last_state=True, initial_state=init, cu_seqlens=cu)

    assert gradcheck(fn, values)


# ============================================================================================
# selective_state_step
# ============================================================================================

@pytest.mark.parametrize("bc", ["shared", "grouped"])
@pytest.mark.parametrize("has_D,has_z,has_bias,softplus", list(itertools.product([False, True], repeat=4)))
def test_state_step_mamba1_iterated_equals_scan(bc, has_D, has_z, has_bias, softplus):
    batch, dim, N, L, G = 2, 6, 5, 6, 3
    args = scan_args(batch, dim, N, L, bc, G=G)
    D = randn(dim) if has_D else None
    z = randn(batch, dim, L) if has_z else None
    dt_bias = randn(dim) * 0.5 if has_bias else None
    init = randn(batch, dim, N)
    y_ref, last_ref = R.selective_scan(**args, D=D, z=z, dt_bias=dt_bias, softplus=softplus,
                                       return_last_state=True, initial_state=init)
    state = init.clone()
    ys = []
    for t in range(L):
        y_t = R.selective_state_step(state, args["u"][..., t], args["delta"][..., t], args["A"],
                                     args["B"][..., t], args["C"][..., t], D, None if z is None else z[..., t],
                                     dt_bias, softplus)
        assert y_t.shape == (batch, dim)
        ys.append(y_t)
    assert_close64(torch.stack(ys, -1), y_ref)
    assert_close64(state, last_ref)


@pytest.mark.parametrize("per_head", ["dense", "tied_views", "per_head_shapes"])
def test_state_step_mamba2_iterated_equals_ssd(per_head):
    batch, L, H, P, G, N = 2, 5, 4, 3, 2, 5
    a = ssd_args(batch, L, H, P, G, N, D="h")
    y_ref, final_ref = R.ssd_scan_sequential(**a, chunk_size=4, dt_softplus=True, return_final_states=True)
    A, D, dt_bias = a["A"], a["D"], a["dt_bias"]
    if per_head == "dense":
        A_s, D_s, bias_s = A[:, None, None].repeat(1, P, N), D[:, None].repeat(1, P), dt_bias[:, None].repeat(1, P)
    elif per_head == "tied_views":  # stride-0 expanded views, as mamba_ssm passes them
        A_s, D_s, bias_s = A[:, None, None].expand(H, P, N), D[:, None].expand(H, P), dt_bias[:, None].expand(H, P)
    else:
        A_s, D_s, bias_s = A, D, dt_bias
    state = a["initial_states"].clone()
    ys = []
    for t in range(L):
        dt_t = a["dt"][:, t]
        if per_head != "per_head_shapes":
            dt_t = dt_t[:, :, None].expand(batch, H, P)
        ys.append(R.selective_state_step(state, a["X"][:, t], dt_t, A_s, a["B"][:, t], a["C"][:, t], D_s,
                                         a["z"][:, t], bias_s, softplus=True))
    assert_close64(torch.stack(ys, 1), y_ref)
    assert_close64(state, final_ref)


@pytest.mark.parametrize("layout", ["mamba1", "mamba2"])
def test_state_step_batch_indices_and_padding(layout):
    batch, slots, N = 3, 5, 4
    if layout == "mamba1":
        dim = 6
        cache = randn(slots, dim, N)
        x, dt, z = randn(batch, dim), randn(batch, dim), randn(batch, dim)
        A, Bm, Cm = -torch.rand(dim, N, dtype=f64), randn(batch, 2, N), randn(batch, 2, N)
        D, dt_bias = randn(dim), randn(dim)
    else:
        H, P = 4, 3
        cache = randn(slots, H, P, N)
        x, dt, z = randn(batch, H, P), randn(batch, H), randn(batch, H, P)
        A, Bm, Cm = -torch.rand(H, dtype=f64), randn(batch, 2, N), randn(batch, 2, N)
        D, dt_bias = randn(H), randn(H)
    before = cache.clone()
    idx = torch.tensor([4, -1, 1], dtype=torch.int32)
    y = R.selective_state_step(cache, x, dt, A, Bm, Cm, D, z, dt_bias, state_batch_indices=idx)
    assert y.shape == x.shape
    for b, slot in enumerate(idx.tolist()):
        if slot < 0:
            assert torch.equal(y[b], torch.zeros_like(y[b]))
            continue
        own = before[slot:slot + 1].clone()
        y_b = R.selective_state_step(own, x[b:b + 1], dt[b:b + 1], A, Bm[b:b + 1], Cm[b:b + 1], D, z[b:b + 1],
                                     dt_bias)
        assert_close64(y[b:b + 1], y_b)
        assert_close64(cache[slot], own[0])
    for slot in (0, 2, 3):
        assert torch.equal(cache[slot], before[slot])


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("state_dtype", [torch.float32, "same"])
def test_state_step_low_precision(dtype, state_dtype):
    state_dtype = dtype if state_dtype == "same" else state_dtype
    batch, H, P, G, N = 2, 4, 3, 2, 5
    state = randn(batch, H, P, N, dtype=state_dtype)
    args = dict(x=randn(batch, H, P, dtype=dtype), dt=randn(batch, H, dtype=dtype),
                A=-torch.rand(H, dtype=torch.float32) - 0.1, B=randn(batch, G, N, dtype=dtype),
                C=randn(batch, G, N, dtype=dtype), D=randn(H, dtype=torch.float32),
                z=randn(batch, H, P, dtype=dtype), dt_bias=randn(H, dtype=torch.float32))
    state64 = state.double()
    y64 = R.selective_state_step(state64, **to64(args))
    y = R.selective_state_step(state, **args)
    assert y.dtype == dtype and state.dtype == state_dtype
    assert_rel(y, y64, REL_TOL[dtype], "y")
    assert_rel(state, state64, REL_TOL[state_dtype], "state")


def test_state_step_noncontiguous():
    batch, H, P, G, N = 2, 4, 3, 2, 5
    state = randn(batch, H, P, N)
    args = dict(x=randn(batch, H, P), dt=randn(batch, H, P), A=-torch.rand(H, P, N, dtype=f64),
                B=randn(batch, G, N), C=randn(batch, G, N), D=randn(H, P), z=randn(batch, H, P),
                dt_bias=randn(H, P))
    s1 = state.clone()
    y1 = R.selective_state_step(s1, **args)
    s2 = transposed(state.clone())  # a cache stored with N before P
    y2 = R.selective_state_step(s2, **{k: strided(v) for k, v in args.items()})
    assert not s2.is_contiguous()
    assert_close64(y2, y1)
    assert_close64(s2, s1)


@pytest.mark.parametrize("layout", ["mamba1", "mamba2"])
def test_state_step_gradcheck(layout):
    batch, N = 2, 2
    if layout == "mamba1":
        dim = 2
        tensors = [randn(batch, dim, N), randn(batch, dim), randn(batch, dim), -torch.rand(dim, N, dtype=f64),
                   randn(batch, N), randn(batch, N), randn(dim), randn(batch, dim), randn(dim)]
    else:
        H, P = 2, 2
        tensors = [randn(batch, H, P, N), randn(batch, H, P), randn(batch, H), -torch.rand(H, dtype=f64),
                   randn(batch, 1, N), randn(batch, 1, N), randn(H, P), randn(batch, H, P), randn(H)]
    values = tuple(t.requires_grad_() for t in tensors)
    idx = torch.tensor([1, 0])

    def fn(state, *rest):
        state = state.clone()
        y = R.selective_state_step(state, *rest, softplus=True, state_batch_indices=idx)
        return y, state

    assert gradcheck(fn, values)


# ============================================================================================
# ssd_chunk_scan / ssd_scan_sequential
# ============================================================================================

@pytest.mark.parametrize("L,chunk_size", [(1, 4), (7, 4), (16, 4), (37, 8), (5, 16)])
@pytest.mark.parametrize("G", [1, 2])
@pytest.mark.parametrize("has_seq_idx", [False, True])
def test_ssd_chunked_equals_sequential_and_mamba1(L, chunk_size, G, has_seq_idx):
    batch, H, P, N = 2, 4, 3, 5
    a = ssd_args(batch, L, H, P, G, N)
    seq_idx = sorted_seq_idx(batch, L) if has_seq_idx else None
    kw = dict(dt_softplus=True, seq_idx=seq_idx, return_final_states=True)
    y, final = R.ssd_chunk_scan(**a, chunk_size=chunk_size, **kw)
    y_seq, final_seq = R.ssd_scan_sequential(**a, chunk_size=chunk_size, **kw)
    assert y.shape == (batch, L, H, P) and final.shape == (batch, H, P, N)
    assert_close64(y, y_seq, "y vs sequential")
    assert_close64(final, final_seq, "final vs sequential")
    # Mamba-1 view: channels h*P+p, A repeated, B/C grouped
    m1 = ssd_to_mamba1(**a, dt_softplus=True)
    y1, last1 = R.selective_scan(**m1, return_last_state=True, seq_idx=seq_idx)
    assert_close64(y, mamba1_y_to_ssd(y1, H, P), "y vs selective_scan")
    assert_close64(final, last1.reshape(batch, H, P, N), "final vs selective_scan")


@pytest.mark.parametrize("option", ["D_none", "D_h", "z_none", "dt_bias_none", "no_softplus", "dt_limit",
                                    "init_none", "all_off"])
def test_ssd_optional_arguments(option):
    batch, L, H, P, G, N, cs = 2, 11, 4, 3, 2, 3, 4
    a = ssd_args(batch, L, H, P, G, N,
                 D={"D_none": None, "all_off": None, "D_h": "h"}.get(option, "hp"),
                 z=option not in ("z_none", "all_off"), dt_bias=option not in ("dt_bias_none", "all_off"),
                 init=option not in ("init_none", "all_off"))
    kw = dict(dt_softplus=option not in ("no_softplus", "all_off"))
    if option == "dt_limit":
        kw["dt_limit"] = (0.1, 0.6)
    y, final = R.ssd_chunk_scan(**a, chunk_size=cs, **kw, return_final_states=True)
    y_seq, final_seq = R.ssd_scan_sequential(**a, chunk_size=cs, **kw, return_final_states=True)
    assert_close64(y, y_seq)
    assert_close64(final, final_seq)
    m1 = ssd_to_mamba1(**a, **kw)
    y_np, last_np = oracle_selective_scan(**m1)  # fully independent numpy loop
    assert_close64(y, mamba1_y_to_ssd(y_np, H, P))
    assert_close64(final, last_np.reshape(batch, H, P, N))


def test_ssd_dt_limit_default_clamps_negative_dt():
    batch, L, H, P, G, N = 1, 6, 2, 2, 1, 3
    a = ssd_args(batch, L, H, P, G, N, dt_bias=False)
    a["dt"] = -a["dt"].abs() - 0.1  # all negative, no softplus: dt' = 0 everywhere
    y, final = R.ssd_chunk_scan(**a, chunk_size=4, return_final_states=True)
    # nothing enters the state; it keeps the initial state
    assert_close64(final, a["initial_states"])
    expected = torch.einsum("bhpn,blhn->blhp", a["initial_states"], a["C"].expand(-1, -1, H, -1))
    expected = (expected + a["D"] * a["X"]) * F.silu(a["z"])
    assert_close64(y, expected)


def test_ssd_return_forms_and_seq_meta():
    L, H, P, G, N, cs = 9, 2, 3, 1, 4, 4
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    a = ssd_args(1, L, H, P, G, N, init=False)
    y = R.ssd_chunk_scan(**a, chunk_size=cs, seq_meta={"cu_seqlens": cu})
    assert isinstance(y, torch.Tensor)
    out = R.ssd_chunk_scan(**a, chunk_size=cs, cu_seqlens=cu, return_final_states=True)
    assert len(out) == 2 and out[1].shape == (1, H, P, N)
    out2 = R.ssd_chunk_scan(**a, chunk_size=cs, cu_seqlens=cu, return_varlen_states=True)
    assert len(out2) == 2 and out2[1].shape == (2, H, P, N)
    out3 = R.ssd_chunk_scan(**a, chunk_size=cs, cu_seqlens=cu, return_final_states=True, return_varlen_states=True)
    assert len(out3) == 3
    for t in (out[0], out2[0], out3[0]):
        assert_close64(t, y)
    assert_close64(out3[1], out[1])
    assert_close64(out3[2], out2[1])
    assert_close64(out3[1][0], out3[2][-1])  # the row's final state is its last sequence's
    # seq_meta's seq_idx == keyword seq_idx; keyword wins over seq_meta
    seq_idx = torch.tensor([[0] * 4 + [1] * 5], dtype=torch.int32)
    y_kw = R.ssd_chunk_scan(**a, chunk_size=cs, seq_idx=seq_idx)
    assert_close64(R.ssd_chunk_scan(**a, chunk_size=cs, seq_meta={"seq_idx": seq_idx}), y_kw)
    assert_close64(y_kw, y)
    assert_close64(R.ssd_chunk_scan(**a, chunk_size=cs, seq_meta={"seq_idx": torch.zeros_like(seq_idx)},
                                    seq_idx=seq_idx), y_kw)


@pytest.mark.parametrize("chunk_size", [2, 4, 16])
@pytest.mark.parametrize("has_init", [False, True])
@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64])
def test_ssd_cu_seqlens_packed_equals_one_by_one(chunk_size, has_init, cu_dtype):
    H, P, G, N = 4, 3, 2, 3
    lengths = [0, 5, 0, 1, 9, 3, 0]  # empty sequences first, inside and last
    L = sum(lengths)
    cu = torch.tensor([0] + list(itertools.accumulate(lengths)), dtype=cu_dtype)
    a = ssd_args(1, L, H, P, G, N, init=has_init, nseq=len(lengths))
    kw = dict(dt_softplus=True, return_final_states=True, return_varlen_states=True)
    y, final, varlen = R.ssd_chunk_scan(**a, chunk_size=chunk_size, cu_seqlens=cu, **kw)
    y_seq, final_seq, varlen_seq = R.ssd_scan_sequential(**a, chunk_size=chunk_size, cu_seqlens=cu, **kw)
    assert varlen.shape == (len(lengths), H, P, N) and final.shape == (1, H, P, N)
    assert_close64(y, y_seq)
    assert_close64(final, final_seq)
    assert_close64(varlen, varlen_seq)
    # the sequences one by one
    ys = []
    for s, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        one = {k: (v[:, start:end] if k in ("X", "dt", "B", "C", "z") else v) for k, v in a.items()}
        if has_init:
            one["initial_states"] = a["initial_states"][s:s + 1]
        y_s, final_s = R.ssd_chunk_scan(**one, chunk_size=chunk_size, dt_softplus=True, return_final_states=True)
        ys.append(y_s)
        assert_close64(varlen[s], final_s[0], f"varlen state of sequence {s}")
    assert_close64(y, torch.cat(ys, 1))
    assert_close64(final[0], varlen[5])  # last non-empty sequence
    # Mamba-1 view with the same cu_seqlens
    m1 = ssd_to_mamba1(**a, dt_softplus=True)
    y1, last1 = R.selective_scan(**m1, return_last_state=True, cu_seqlens=cu)
    assert_close64(y, mamba1_y_to_ssd(y1, H, P))
    assert_close64(varlen, last1.reshape(len(lengths), H, P, N))


@pytest.mark.parametrize("chunk_size", [3, 8])
def test_ssd_seq_idx_packed_equals_one_by_one(chunk_size):
    H, P, G, N = 2, 3, 1, 4
    lengths = [4, 1, 7, 2]
    L = sum(lengths)
    seq_idx = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), torch.tensor(lengths))[None]
    a = ssd_args(1, L, H, P, G, N, init=True)
    y, final = R.ssd_chunk_scan(**a, chunk_size=chunk_size, seq_idx=seq_idx, return_final_states=True)
    ys, start = [], 0
    for s, n in enumerate(lengths):
        one = {k: (v[:, start:start + n] if k in ("X", "dt", "B", "C", "z") else v) for k, v in a.items()}
        if s > 0:
            del one["initial_states"]  # the initial state only reaches the first segment
        y_s, final_s = R.ssd_chunk_scan(**one, chunk_size=chunk_size, return_final_states=True)
        ys.append(y_s)
        start += n
    assert_close64(y, torch.cat(ys, 1))
    assert_close64(final, final_s)


@pytest.mark.parametrize("split", [1, 6, 13])
def test_ssd_split_with_state_passing(split):
    batch, L, H, P, G, N, cs = 2, 19, 2, 3, 2, 3, 4
    a = ssd_args(batch, L, H, P, G, N)
    y, final = R.ssd_chunk_scan(**a, chunk_size=cs, dt_softplus=True, return_final_states=True)

    def part(sl, init):
        p = {k: (v[:, sl] if k in ("X", "dt", "B", "C", "z") else v) for k, v in a.items()}
        p["initial_states"] = init
        return p

    y1, mid = R.ssd_chunk_scan(**part(slice(0, split), a["initial_states"]), chunk_size=cs, dt_softplus=True,
                               return_final_states=True)
    y2, final2 = R.ssd_chunk_scan(**part(slice(split, L), mid), chunk_size=cs, dt_softplus=True,
                                  return_final_states=True)
    assert_close64(torch.cat([y1, y2], 1), y)
    assert_close64(final2, final)


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("fn", ["chunked", "sequential"])
def test_ssd_low_precision(dtype, fn):
    op = R.ssd_chunk_scan if fn == "chunked" else R.ssd_scan_sequential
    batch, L, H, P, G, N, cs = 2, 23, 4, 5, 2, 7, 8
    a = ssd_args(batch, L, H, P, G, N, dtype=dtype)
    seq_idx = sorted_seq_idx(batch, L)
    y, final = op(**a, chunk_size=cs, dt_softplus=True, seq_idx=seq_idx, return_final_states=True)
    y64, final64 = op(**to64(a), chunk_size=cs, dt_softplus=True, seq_idx=seq_idx, return_final_states=True)
    assert y.dtype == dtype and final.dtype == torch.float32
    assert_rel(y, y64, REL_TOL[dtype], "y")
    assert_rel(final, final64, REL_TOL[dtype], "final_states")


def test_ssd_noncontiguous():
    batch, L, H, P, G, N, cs = 2, 10, 4, 3, 2, 3, 4
    a = ssd_args(batch, L, H, P, G, N)
    y, final = R.ssd_chunk_scan(**a, chunk_size=cs, dt_softplus=True, return_final_states=True)
    for view in (strided, transposed):
        nc = {k: view(v) for k, v in a.items()}
        y2, final2 = R.ssd_chunk_scan(**nc, chunk_size=cs, dt_softplus=True, return_final_states=True)
        assert_close64(y2, y)
        assert_close64(final2, final)


@pytest.mark.parametrize("fn", ["chunked", "sequential"])
@pytest.mark.parametrize("varlen", ["seq_idx", "cu_seqlens"])
def test_ssd_gradcheck(fn, varlen):
    op = R.ssd_chunk_scan if fn == "chunked" else R.ssd_scan_sequential
    L, H, P, G, N, cs = 6, 2, 2, 1, 2, 4
    cu = torch.tensor([0, 1, 1, 6])
    batch = 1 if varlen == "cu_seqlens" else 2
    a = ssd_args(batch, L, H, P, G, N, nseq=3 if varlen == "cu_seqlens" else None)
    names = list(a)
    values = tuple(v.clone().requires_grad_() for v in a.values())
    if varlen == "seq_idx":
        extra = dict(seq_idx=torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 2]]), return_final_states=True)
    else:
        extra = dict(cu_seqlens=cu, return_final_states=True, return_varlen_states=True)

    def f(*vals):
        return op(**dict(zip(names, vals)), chunk_size=cs, dt_softplus=True, **extra)

    assert gradcheck(f, values)


# ============================================================================================
# norms
# ============================================================================================

@pytest.mark.parametrize("is_rms", [False, True])
@pytest.mark.parametrize("has_residual", [False, True])
@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("prenorm", [False, True])
def test_fused_layer_norm_matches_formula(is_rms, has_residual, has_bias, prenorm):
    dim, eps = 7, 1e-5
    x, weight = randn(3, 4, dim), randn(dim)
    bias = randn(dim) if has_bias else None
    residual = randn(3, 4, dim) if has_residual else None
    out = R.fused_layer_norm(x, weight, bias, residual, is_rms=is_rms, eps=eps, prenorm=prenorm)
    s = x + residual if has_residual else x
    if is_rms:
        ref = s / torch.sqrt((s * s).mean(-1, keepdim=True) + eps) * weight + (0 if bias is None else bias)
    else:
        ref = F.layer_norm(s, (dim,), weight, bias, eps)
    if prenorm:
        y, res = out
        assert_close64(res, s, "residual_out")
    else:
        y = out
        assert isinstance(out, torch.Tensor)
    assert_close64(y, ref, "y")


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("residual_dtype", [None, "same", torch.float32])
@pytest.mark.parametrize("residual_in_fp32", [False, True])
@pytest.mark.parametrize("is_rms", [False, True])
def test_fused_layer_norm_dtypes(dtype, residual_dtype, residual_in_fp32, is_rms):
    dim = 33
    x = randn(4, dim, dtype=dtype)
    weight, bias = randn(dim, dtype=torch.float32), randn(dim, dtype=torch.float32)
    residual = None if residual_dtype is None else randn(4, dim, dtype=dtype if residual_dtype == "same"
                                                         else residual_dtype)
    y, res = R.fused_layer_norm(x, weight, bias, residual, is_rms=is_rms, residual_in_fp32=residual_in_fp32)
    y64, res64 = R.fused_layer_norm(x.double(), weight.double(), bias.double(),
                                    None if residual is None else residual.double(), is_rms=is_rms)
    assert y.dtype == dtype
    expected_res_dtype = residual.dtype if residual is not None else (torch.float32 if residual_in_fp32 else dtype)
    assert res.dtype == expected_res_dtype
    assert_rel(y, y64, REL_TOL[dtype], "y")
    assert_rel(res, res64, REL_TOL.get(res.dtype, 1e-5), "residual_out")


def test_fused_layer_norm_float64_residual_and_noncontiguous():
    dim = 6
    x, weight, bias = randn(5, dim), randn(dim), randn(dim)
    y, res = R.fused_layer_norm(x, weight, bias, residual_in_fp32=True)
    assert res.dtype == f64  # "fp32" means the compute dtype: float64 for float64 inputs
    y2, res2 = R.fused_layer_norm(transposed(x), strided(weight), strided(bias))
    assert_close64(y2, y)
    assert_close64(res2, res)


@pytest.mark.parametrize("is_rms", [False, True])
def test_fused_layer_norm_gradcheck(is_rms):
    dim = 5
    values = tuple(t.requires_grad_() for t in (randn(2, dim), randn(dim), randn(dim), randn(2, dim)))
    assert gradcheck(lambda x, w, b, r: R.fused_layer_norm(x, w, b, r, is_rms=is_rms, prenorm=True), values)


def gated_norm_formula(x, weight, bias, z, eps, group_size, norm_before_gate, is_rms):
    """Explicit loop over the groups, float64."""
    dim = x.shape[-1]
    group_size = group_size or dim
    h = x if (z is None or norm_before_gate) else x * z * torch.sigmoid(z)
    parts = []
    for g0 in range(0, dim, group_size):
        part = h[..., g0:g0 + group_size]
        if is_rms:
            parts.append(part / torch.sqrt((part ** 2).mean(-1, keepdim=True) + eps))
        else:
            parts.append(F.layer_norm(part, (group_size,), eps=eps))
    out = torch.cat(parts, -1) * weight
    if bias is not None:
        out = out + bias
    if z is not None and norm_before_gate:
        out = out * z * torch.sigmoid(z)
    return out


@pytest.mark.parametrize("group_size", [None, 3, 5])
@pytest.mark.parametrize("has_z", [False, True])
@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("is_rms_norm", [False, True])
@pytest.mark.parametrize("has_bias", [False, True])
def test_gated_rms_norm_matches_formula(group_size, has_z, norm_before_gate, is_rms_norm, has_bias):
    dim, eps = 15, 1e-6
    x, weight = randn(2, 3, dim), randn(dim)
    z = randn(2, 3, dim) if has_z else None
    bias = randn(dim) if has_bias else None
    out = R.gated_rms_norm(x, weight, bias, z, eps, group_size, norm_before_gate, is_rms_norm)
    assert_close64(out, gated_norm_formula(x, weight, bias, z, eps, group_size, norm_before_gate, is_rms_norm))


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_gated_rms_norm_low_precision_and_noncontiguous(dtype, norm_before_gate):
    dim = 24
    x, z = randn(5, dim, dtype=dtype), randn(5, dim, dtype=dtype)
    weight = randn(dim, dtype=torch.float32)
    out = R.gated_rms_norm(transposed(x), strided(weight), None, strided(z), group_size=8,
                           norm_before_gate=norm_before_gate)
    ref = R.gated_rms_norm(x.double(), weight.double(), None, z.double(), group_size=8,
                           norm_before_gate=norm_before_gate)
    assert out.dtype == dtype
    assert_rel(out, ref, REL_TOL[dtype])


@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("is_rms_norm", [False, True])
def test_gated_rms_norm_gradcheck(norm_before_gate, is_rms_norm):
    dim = 6
    values = tuple(t.requires_grad_() for t in (randn(2, dim), randn(dim), randn(dim), randn(2, dim)))

    def fn(x, w, b, z):
        return R.gated_rms_norm(x, w, b, z, 1e-6, 3, norm_before_gate, is_rms_norm)

    assert gradcheck(fn, values)


# ============================================================================================
# the tests can fail: a wrong formula is caught by the checks above
# ============================================================================================

def test_checks_catch_errors():
    ref = randn(4, 5)
    with pytest.raises(AssertionError):
        assert_close64(ref + 1e-6, ref)
    with pytest.raises(AssertionError):
        assert_rel(torch.full_like(ref, float("nan")), ref, 1.0)
    with pytest.raises(AssertionError):
        assert_rel(ref * 1.01, ref, REL_TOL[torch.bfloat16] / 2)
