"""ssd_chunk_scan (Mamba-2 SSD) on every backend against the float64 reference: forward grid,
states, varlen, chunked prefill, gradients, mamba_ssm names, torch.compile, bad input."""
import pytest
import torch

import ssm.ops as ops
import ssm.ops.ssd as ssd_op
from ssm.ops.python import reference
from tests.ops.harness import DTYPES, REL_TOL, assert_close, backends, device_of, rand, rel_err, to64, use_backend

GRAD_NAMES = ("X", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
# L = 1 with two groups: with one, all of y is dt x (C . B) for one 8-term dot, whose cancellation
# (about 1 draw in 1000) leaves float32's rounding above the relative tolerance
SHAPES = [  # (batch, L, H, P, G, N, chunk_size)
    (1, 1, 2, 4, 2, 8, 16),
    (2, 37, 4, 5, 2, 7, 16),
    (1, 64, 3, 8, 1, 16, 32),
    (2, 50, 4, 3, 4, 5, 64),
    (1, 100, 6, 16, 3, 32, 32),
]
OPTIONS = ["plain", "D_head+z", "D_full+bias+softplus", "limit+init+final", "seq_idx+init+final",
           "noncontig", "all"]


def make_inputs(batch, L, H, P, G, N, dtype, device, *, noncontig=False, D=None, z=False, bias=False,
                init=False, seq=False):
    """Random scan inputs (dt positive around 0.1..1 before the bias, A negative)."""
    kw = dict(device=device, noncontig=noncontig)
    args = dict(
        X=rand(batch, L, H, P, dtype=dtype, **kw),
        dt=(torch.rand(batch, L, H, device=device) * 0.9 + 0.1).to(dtype),
        A=-torch.rand(H, device=device) * 2 - 0.1,
        B=rand(batch, L, G, N, dtype=dtype, **kw, scale=0.5),
        C=rand(batch, L, G, N, dtype=dtype, **kw, scale=0.5),
        D=None if D is None else rand(*((H,) if D == "head" else (H, P)), device=device),
        z=rand(batch, L, H, P, dtype=dtype, **kw) if z else None,
        dt_bias=rand(H, device=device, scale=0.5) if bias else None,
        initial_states=rand(batch, H, P, N, device=device) if init else None,
        seq_idx=random_seq_idx(batch, L, device) if seq else None,
    )
    if noncontig:
        args["dt"] = args["dt"].transpose(0, 1).contiguous().transpose(0, 1)
    return args


def random_seq_idx(batch, L, device):
    # Sorted ids (int32, as mamba_ssm passes them); the first need not be 0.
    return torch.sort(torch.randint(0, 3, (batch, L), device=device), dim=1).values.to(torch.int32)


def options_of(name):
    full = name == "all"
    inputs = dict(noncontig=name in ("noncontig",) or full,
                  D="head" if name == "D_head+z" else "full" if name in ("D_full+bias+softplus", "all") else None,
                  z=name == "D_head+z" or full, bias=name == "D_full+bias+softplus" or full,
                  init="init" in name or full, seq="seq_idx" in name or full)
    call = dict(dt_softplus="softplus" in name or full,
                dt_limit=(0.2, 0.8) if "limit" in name or full else (0.0, float("inf")),
                return_final_states="final" in name or full)
    return inputs, call


def reference64(args, chunk_size, **call):
    a = {k: (to64(v)[0] if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    seq_idx = a.pop("seq_idx")
    return reference.ssd_chunk_scan(a.pop("X"), a.pop("dt"), a.pop("A"), a.pop("B"), a.pop("C"), chunk_size,
                                    seq_idx=seq_idx, **a, **call)


def float32_da_error(got, want, args, douts, chunk_size, dt_limit):
    """dA's float32 error against float64 over its bound (pass: <= 1). dA = Σ_t T_t with the per-token terms
    T_t = Δ_t ∂L/∂(Δ_t A), which cancel (Σ|T| / |dA| is 20-1300 in these tests' inputs). The kernels take every
    decay as exp(cs_t - cs_s) of float32 running sums cs of Δ A over a chunk, |cs| up to C = |A| max_chunk Σ Δ (~460
    at chunk 256): each cs carries ~1.3 u C of rounding (u = 2^-24; the CUDA block scan's order, emulated), every
    decay ~2.6 u C relative, correlated along the chunk, so where the terms cancel dA can be off by ~u C Σ|T| per
    head: the bound is 2 REL_TOL |dA| + u ||C Σ|T|||. (Emulated on the CPU, benchmarks/ssd_f32_da_emulation.py:
    the cs rounding alone reached 4.6% of the second term over 12 seeds, and 1.25-2.7e-5 of |dA|.) Rows and
    seq_idx only, dt_softplus on (the terms come from the reference's row layout with a per-token A)."""
    d = {k: (v.detach().double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
         for k, v in args.items()}
    x, dt, A, B, C, D, z, init = reference._ssd_inputs(d["X"], d["dt"], d["A"], d["B"], d["C"], d["D"], d["z"],
                                                       d["initial_states"], d["dt_bias"], True, dt_limit)
    batch, L, H = dt.shape
    nc = -(-L // chunk_size)
    # (B, nc, Q, H): A per token; its gradient is T
    a_tok = A.expand(batch, nc, chunk_size, H).clone().requires_grad_()
    y, final = reference._ssd_rows(x, dt, a_tok, B, C, chunk_size, d["seq_idx"], init)
    y = reference._ssd_output(y, x, D, z, torch.float64)
    loss = (y * douts[0].double()).sum() + (final * douts[1].double()).sum()
    (terms,) = torch.autograd.grad(loss, a_tok)
    # (H,): |A| times the largest Σ Δ over a chunk
    span = torch.nn.functional.pad(dt, (0, 0, 0, nc * chunk_size - L)).reshape(batch, nc, chunk_size, H).sum(2)
    cs_max = A.abs() * span.amax((0, 1))
    scale = (cs_max * terms.abs().sum((0, 1, 2))).norm()
    bound = 2 * REL_TOL[torch.float32] * want.double().norm() + 2.0 ** -24 * scale.to(want.device)
    return ((got.double().to(want.device) - want.double()).norm() / bound).item()


def run(backend, args, chunk_size, **call):
    with use_backend(backend):
        return ops.ssd_chunk_scan(args["X"], args["dt"], args["A"], args["B"], args["C"], chunk_size,
                                  D=args["D"], z=args["z"], initial_states=args["initial_states"],
                                  dt_bias=args["dt_bias"], seq_idx=args["seq_idx"], **call)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("options", OPTIONS)
def test_forward_matches_reference(backend, dtype, shape, options):
    batch, L, H, P, G, N, chunk = shape
    inputs, call = options_of(options)
    args = make_inputs(batch, L, H, P, G, N, dtype, device_of(backend), **inputs)
    out = run(backend, args, chunk, **call)
    ref = reference64(args, chunk, **call)
    if call["return_final_states"]:
        assert out[0].dtype == dtype and out[1].dtype == torch.float32
        assert_close(out[0], ref[0], dtype, "y")
        assert_close(out[1], ref[1], dtype, "final_states")
    else:
        assert out.dtype == dtype
        assert_close(out, ref, dtype, "y")


def packed_batch(lengths, H, P, G, N, dtype, device, init=False):
    """One row of packed sequences: inputs, cu_seqlens, and per-sequence initial states."""
    L = sum(lengths)
    args = make_inputs(1, L, H, P, G, N, dtype, device, D="full", z=True, bias=True)
    cu = torch.tensor([0] + lengths, device=device).cumsum(0).to(torch.int32)
    args["seq_idx"] = torch.repeat_interleave(torch.arange(len(lengths), device=device),
                                              torch.tensor(lengths, device=device))[None].to(torch.int32)
    if init:
        args["initial_states"] = rand(len(lengths), H, P, N, device=device)
    return args, cu


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("init", [False, True])
def test_varlen_states_equal_one_by_one_runs(backend, dtype, init):
    lengths = [5, 1, 0, 40, 17]
    args, cu = packed_batch(lengths, 4, 6, 2, 8, dtype, device_of(backend), init=init)
    y, final, varlen = run(backend, args, 16, dt_softplus=True, cu_seqlens=cu, return_final_states=True,
                           return_varlen_states=True)
    assert varlen.shape == (len(lengths), 4, 6, 8) and varlen.dtype == torch.float32
    ref_y, _, ref_varlen = reference64(args, 16, dt_softplus=True, cu_seqlens=cu, return_final_states=True,
                                       return_varlen_states=True)
    assert_close(y, ref_y, dtype, "y")
    assert_close(varlen, ref_varlen, dtype, "varlen_states")
    assert_close(final[0], varlen[-1], torch.float32, "final_states vs last varlen state")
    for s, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        start_state = args["initial_states"][s:s + 1] if init else None
        if start == end:
            assert_close(varlen[s], start_state[0] if init else torch.zeros_like(varlen[s]), torch.float32)
            continue
        one = dict(args, seq_idx=None, initial_states=start_state)
        for k in ("X", "dt", "B", "C", "z"):
            one[k] = args[k][:, start:end]
        y1, state1 = run(backend, one, 16, dt_softplus=True, return_final_states=True)
        assert_close(y[:, start:end], y1, dtype, f"y of sequence {s}", factor=2.0)
        assert_close(varlen[s], state1[0], dtype, f"state of sequence {s}", factor=2.0)


@pytest.mark.parametrize("backend", backends())
def test_varlen_gradients_match_reference(backend):
    args, cu = packed_batch([9, 0, 20, 1, 14], 4, 4, 2, 8, torch.float32, device_of(backend), init=True)
    names = [k for k in GRAD_NAMES if args[k] is not None]
    call = dict(dt_softplus=True, cu_seqlens=cu, return_final_states=True, return_varlen_states=True)
    leaves = dict(args, **{k: args[k].detach().clone().requires_grad_() for k in names})
    outs = run(backend, leaves, 16, **call)
    grads = [torch.randn_like(o) for o in outs]
    torch.autograd.backward(list(outs), grads)
    ref_leaves = dict(args, **{k: args[k].detach().double().requires_grad_() for k in names})
    ref = reference.ssd_chunk_scan(*(ref_leaves[k] for k in ("X", "dt", "A", "B", "C")), 16, D=ref_leaves["D"],
                                   z=ref_leaves["z"], dt_bias=ref_leaves["dt_bias"],
                                   initial_states=ref_leaves["initial_states"], **call)
    torch.autograd.backward(list(ref), [g.double() for g in grads])
    for name in names:
        assert_close(leaves[name].grad, ref_leaves[name].grad, torch.float32, f"d{name}", factor=2.0)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_prefill_with_state_passing_equals_one_pass(backend, dtype):
    args = make_inputs(2, 90, 4, 8, 2, 16, dtype, device_of(backend), D="head", z=True, bias=True, init=True)
    call = dict(dt_softplus=True, return_final_states=True)
    y, final = run(backend, args, 32, **call)
    state, pieces = args["initial_states"], []
    for start, end in ((0, 7), (7, 40), (40, 41), (41, 90)):
        part = dict(args, initial_states=state)
        for k in ("X", "dt", "B", "C", "z"):
            part[k] = args[k][:, start:end]
        y_part, state = run(backend, part, 32, **call)
        pieces.append(y_part)
    assert_close(torch.cat(pieces, 1), y, dtype, "y", factor=2.0)
    assert_close(state, final, dtype, "final_states", factor=2.0)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("options", ["plain", "D_head+z", "all"])
def test_gradients_match_reference(backend, dtype, options):
    inputs, call = options_of(options)
    inputs["noncontig"] = False
    args = make_inputs(2, 45, 4, 6, 2, 8, dtype, device_of(backend), **inputs)
    call["return_final_states"] = True
    leaves = {k: (v.detach().clone().requires_grad_() if k in GRAD_NAMES and v is not None else v)
              for k, v in args.items()}
    y, final = run(backend, leaves, 16, **call)
    dy, dfinal = torch.randn_like(y), torch.randn_like(final)
    torch.autograd.backward([y, final], [dy, dfinal])
    ref_leaves = {k: (v.detach().double().requires_grad_() if k in GRAD_NAMES and v is not None else v)
                  for k, v in args.items()}
    seq_idx = ref_leaves.pop("seq_idx")
    ry, rfinal = reference.ssd_chunk_scan(*(ref_leaves[k] for k in ("X", "dt", "A", "B", "C")), 16,
                                          D=ref_leaves["D"], z=ref_leaves["z"], dt_bias=ref_leaves["dt_bias"],
                                          initial_states=ref_leaves["initial_states"], seq_idx=seq_idx, **call)
    torch.autograd.backward([ry, rfinal], [dy.double(), dfinal.double()])
    for name in GRAD_NAMES:
        got, want = leaves[name], ref_leaves[name]
        if got is not None:
            assert got.grad is not None and got.grad.dtype == got.dtype, name
            assert_close(got.grad, want.grad, dtype, f"d{name}", factor=2.0)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("varlen", [False, True])
def test_gradients_over_several_checkpoint_segments(backend, varlen, monkeypatch):
    # L 1100 with two-level checkpoints forced on the CPU backward (its workspace then holds segments
    # of 512 tokens): 3 segments, the last partial; sequences (seq_idx or cu_seqlens) and their states
    # cross the segment edges
    monkeypatch.setattr(ssd_op, "SINGLE_LEVEL_CHECKPOINT_BYTES", 0)
    dev = device_of(backend)
    if varlen:
        args, cu = packed_batch([300, 0, 530, 270], 2, 3, 1, 8, torch.float32, dev, init=True)
        call = dict(cu_seqlens=cu, return_varlen_states=True)
    else:
        args, cu = make_inputs(2, 1100, 2, 3, 1, 8, torch.float32, dev, D="full", z=True, bias=True, init=True,
                               seq=True), None
        call = dict(return_final_states=True, dt_limit=(0.05, 0.8))
    leaves = {k: (v.detach().clone().requires_grad_() if k in GRAD_NAMES and v is not None else v)
              for k, v in args.items()}
    out = run(backend, leaves, 64, dt_softplus=True, **call)
    douts = [torch.randn_like(o) for o in out]
    torch.autograd.backward(list(out), douts)
    ref_leaves = {k: (v.detach().double().requires_grad_() if k in GRAD_NAMES and v is not None else v)
                  for k, v in args.items()}
    ref = reference.ssd_chunk_scan(*(ref_leaves[k] for k in ("X", "dt", "A", "B", "C")), 64, D=ref_leaves["D"],
                                   z=ref_leaves["z"], dt_bias=ref_leaves["dt_bias"],
                                   initial_states=ref_leaves["initial_states"], seq_idx=ref_leaves["seq_idx"],
                                   dt_softplus=True, **call)
    torch.autograd.backward(list(ref), [d.double() for d in douts])
    for name in GRAD_NAMES:
        if leaves[name] is None:
            continue
        if name == "A" and not varlen:
            err = float32_da_error(leaves["A"].grad, ref_leaves["A"].grad, args, douts, 64, call["dt_limit"])
            assert err <= 1.0, f"dA: error {err:.3g} of its float32 bound (float32_da_error)"
        else:
            assert_close(leaves[name].grad, ref_leaves[name].grad, torch.float32, f"d{name}", factor=2.0)


@pytest.mark.parametrize("backend", backends())
def test_long_sequence(backend):
    args = make_inputs(1, 4100, 2, 4, 1, 8, torch.bfloat16, device_of(backend), D="head", bias=True)
    out = run(backend, args, 64, dt_softplus=True)
    assert_close(out, reference64(args, 64, dt_softplus=True), torch.bfloat16)


# ---- mamba_ssm names -------------------------------------------------------------------------

def test_mamba_chunk_scan_combined_matches_and_keeps_state_dtypes():
    args, cu = packed_batch([9, 30], 4, 4, 2, 8, torch.bfloat16, "cpu")
    y, final, varlen = ops.mamba_chunk_scan_combined(
        args["X"], args["dt"], args["A"], args["B"], args["C"], 16, D=args["D"], z=args["z"],
        dt_bias=args["dt_bias"], seq_idx=args["seq_idx"], cu_seqlens=cu, dt_softplus=True,
        return_final_states=True, return_varlen_states=True)
    assert final.dtype == torch.float32 and varlen.dtype == torch.bfloat16
    ref_y, ref_final, ref_varlen = reference64(args, 16, dt_softplus=True, cu_seqlens=cu,
                                               return_final_states=True, return_varlen_states=True)
    assert_close(y, ref_y, torch.bfloat16, "y")
    assert_close(final, ref_final, torch.bfloat16, "final_states")
    assert_close(varlen, ref_varlen, torch.bfloat16, "varlen_states")


def test_combined_ref_takes_any_length():
    args = make_inputs(1, 21, 2, 4, 1, 8, torch.float32, "cpu", D="head", bias=True)
    out = ops.ssd_chunk_scan_combined_ref(args["X"], args["dt"], args["A"], args["B"], args["C"], 8, D=args["D"],
                                          dt_bias=args["dt_bias"], dt_softplus=True)
    assert_close(out, reference64(args, 8, dt_softplus=True), torch.float32)


def split_inputs(batch, L, H, P, G, N, W, d_nonssm, dtype):
    dim = H * P
    conv_dim = dim + 2 * G * N
    return dict(zxbcdt=rand(batch, L, 2 * d_nonssm + 2 * dim + 2 * G * N + H, dtype=dtype),
                conv1d_weight=rand(conv_dim, 1, W, scale=0.5), conv1d_bias=rand(conv_dim),
                dt_bias=rand(H, scale=0.5), A=-torch.rand(H) - 0.1, D=rand(H))


def unfused(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size, *, headdim, ngroups, rmsnorm_weight,
            outproj_weight, norm_before_gate, seq_idx=None, initial_states=None):
    """The Mamba-2 block path written out step by step with the float64 reference ops."""
    H = A.shape[0]
    dim = H * headdim
    gn = (conv1d_weight.shape[0] - dim) // 2
    d_nonssm = (zxbcdt.shape[-1] - 2 * dim - 2 * gn - H) // 2
    zx0, z, xBC, dt = torch.split(zxbcdt, [2 * d_nonssm, dim, dim + 2 * gn, H], dim=-1)
    xBC = reference.dw_causal_conv(xBC.transpose(1, 2), conv1d_weight[:, 0], conv1d_bias, "silu",
                                   seq_idx=seq_idx).transpose(1, 2)
    x, B, C = torch.split(xBC, [dim, gn, gn], dim=-1)
    b, L = zxbcdt.shape[:2]
    y, final = reference.ssd_chunk_scan(x.reshape(b, L, H, headdim), dt, A, B.reshape(b, L, ngroups, -1),
                                        C.reshape(b, L, ngroups, -1), chunk_size, D=D, dt_bias=dt_bias,
                                        dt_softplus=True, seq_idx=seq_idx, initial_states=initial_states,
                                        return_final_states=True)
    y = y.reshape(b, L, dim)
    y = reference.gated_rms_norm(y, rmsnorm_weight, None, z=z, eps=1e-6, group_size=dim // ngroups,
                                 norm_before_gate=norm_before_gate)
    y = torch.cat([torch.nn.functional.silu(zx0[..., :d_nonssm]) * zx0[..., d_nonssm:], y], -1)
    return y @ outproj_weight.T, final


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm_before_gate", [True, False])
def test_split_conv1d_scan_combined_equals_unfused(dtype, norm_before_gate):
    # conv channels 3*4 + 2*5 = 22, deliberately not a multiple of 8
    H, P, G, N = 3, 4, 1, 5
    inputs = split_inputs(2, 37, H, P, G, N, 4, 3, dtype)
    assert (H * P + 2 * G * N) % 8 != 0
    norm_w, out_w = rand(H * P), rand(7, 3 + H * P, scale=0.3)
    seq_idx = random_seq_idx(2, 37, "cpu")
    init = rand(2, H, P, N)
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    out, final = ops.mamba_split_conv1d_scan_combined(
        *leaves.values(), 16, initial_states=init, seq_idx=seq_idx, return_final_states=True,
        rmsnorm_weight=norm_w, outproj_weight=out_w.to(dtype), headdim=P, ngroups=G,
        norm_before_gate=norm_before_gate)
    ref_leaves = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
    ref, ref_final = unfused(*ref_leaves.values(), 16, headdim=P, ngroups=G, rmsnorm_weight=norm_w.double(),
                             outproj_weight=out_w.to(dtype).double(), norm_before_gate=norm_before_gate,
                             seq_idx=seq_idx, initial_states=init.double())
    assert out.dtype == dtype and final.dtype == torch.float32
    assert_close(out, ref, dtype, "out", factor=2.0)
    assert_close(final, ref_final, dtype, "final_states", factor=2.0)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g.double())
    low = None
    if dtype != torch.float32:  # the same path in the low dtype through the reference ops: dA and the conv
        # gradients are sums that cancel, so the bound is relative to what that dtype allows (as test_ssd_split)
        low = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        unfused(*low.values(), 16, headdim=P, ngroups=G, rmsnorm_weight=norm_w, outproj_weight=out_w.to(dtype),
                norm_before_gate=norm_before_gate, seq_idx=seq_idx, initial_states=init)[0].backward(g)
    for name in inputs:
        got, want = leaves[name].grad, ref_leaves[name].grad
        if low is None:
            assert_close(got, want, dtype, f"d{name}", factor=4.0)
        else:
            err, bound = rel_err(got, want), 2 * rel_err(low[name].grad, want) + 2e-3
            assert err <= bound, f"d{name}: relative error {err:.3g} > {bound:.3g} (twice the {dtype} reference's)"


def test_split_conv1d_scan_ref_and_z_gating_without_norm():
    inputs = split_inputs(1, 20, 2, 4, 2, 3, 4, 0, torch.float32)
    D = rand(2, 4)
    inputs["D"] = D
    fused = ops.mamba_split_conv1d_scan_combined(*inputs.values(), 8, ngroups=2)
    ref = ops.mamba_split_conv1d_scan_ref(*(to64(*inputs.values())), 8, ngroups=2)
    assert_close(fused, ref, torch.float32)
    # Without an RMSNorm weight, z gates inside the scan: y = scan(...) * silu(z).
    z = inputs["zxbcdt"][..., :8].double().reshape(1, 20, 2, 4)
    assert fused.shape == (1, 20, 8) and not torch.allclose(fused.double(), fused.double() / torch.sigmoid(z).flatten(2))


# ---- compile, errors -------------------------------------------------------------------------

def test_compile_fullgraph_dynamic_matches_eager():
    H, P, G, N = 4, 4, 2, 8

    def fn(x, dt, A, B, C, D, zxbcdt, conv_w, conv_b, dt_bias, A2, D2, norm_w):
        y, final = ops.ssd_chunk_scan(x, dt, A, B, C, 16, D=D, dt_softplus=True, return_final_states=True)
        y2 = ops.mamba_chunk_scan_combined(x, dt, A, B, C, 16, D=D, dt_bias=dt_bias)
        y3 = ops.mamba_split_conv1d_scan_combined(zxbcdt, conv_w, conv_b, dt_bias, A2, D2, 16,
                                                  rmsnorm_weight=norm_w, headdim=P, ngroups=G)
        return y, final, y2, y3

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for L in (19, 40):
        a = make_inputs(2, L, H, P, G, N, torch.float32, "cpu", D="head")
        s = split_inputs(2, L, H, P, G, N, 4, 0, torch.float32)
        args = (a["X"], a["dt"], a["A"], a["B"], a["C"], a["D"], s["zxbcdt"], s["conv1d_weight"],
                s["conv1d_bias"], s["dt_bias"], s["A"], s["D"], rand(H * P))
        for got, want in zip(compiled(*args), fn(*args)):
            assert_close(got, want, torch.float32)


def test_compile_reference_backend_with_states():
    # The reference path's outputs match the fake implementation's layout (final states of a
    # batch > 1 over several chunks are a slice there).
    args = make_inputs(2, 40, 2, 4, 1, 8, torch.float32, "cpu", init=True)

    def fn(x, dt, A, B, C, init):
        return ops.ssd_chunk_scan(x, dt, A, B, C, 16, initial_states=init, return_final_states=True)

    inputs = [args[k] for k in ("X", "dt", "A", "B", "C", "initial_states")]
    with use_backend("reference"):
        got = torch.compile(fn, fullgraph=True, dynamic=True)(*inputs)
        want = fn(*inputs)
    for g, w in zip(got, want):
        assert_close(g, w, torch.float32)


GOOD = dict(X=(2, 9, 4, 3), dt=(2, 9, 4), A=(4,), B=(2, 9, 2, 5), C=(2, 9, 2, 5))


@pytest.mark.parametrize("bad, kwargs, error, words", [
    (dict(X=torch.randn(2, 9, 4)), {}, ValueError, ["x", "4-d", "(2, 9, 4)"]),
    (dict(dt=torch.randn(2, 9, 3)), {}, ValueError, ["dt", "(2, 9, 4)", "(2, 9, 3)"]),
    (dict(A=torch.randn(4, 5)), {}, ValueError, ["A", "(4)"]),
    (dict(B=torch.randn(2, 9, 3, 5), C=torch.randn(2, 9, 3, 5)), {}, ValueError, ["B", "G=3", "H=4"]),
    (dict(C=torch.randn(2, 9, 2, 6)), {}, ValueError, ["C", "(2, 9, 2, 5)", "(2, 9, 2, 6)"]),
    (dict(X=torch.randint(0, 3, (2, 9, 4, 3))), {}, TypeError, ["x", "dtype", "int64"]),
    ({}, dict(D=torch.randn(4, 2)), ValueError, ["D", "(4,)", "(4, 3)", "(4, 2)"]),
    ({}, dict(z=torch.randn(2, 9, 4, 2)), ValueError, ["z", "(2, 9, 4, 3)"]),
    ({}, dict(dt_bias=torch.randn(3)), ValueError, ["dt_bias", "(4)"]),
    ({}, dict(initial_states=torch.randn(2, 4, 3, 4)), ValueError, ["initial_states", "(2, 4, 3, 5)"]),
    ({}, dict(seq_idx=torch.zeros(2, 9)), TypeError, ["seq_idx", "dtype", "float32"]),
    ({}, dict(cu_seqlens=torch.tensor([0, 4, 9])), ValueError, ["cu_seqlens", "batch"]),
    ({}, dict(return_varlen_states=True), ValueError, ["cu_seqlens", "return_varlen_states"]),
    ({}, dict(dt_limit=(1.0, 0.5)), ValueError, ["dt_limit"]),
    ({}, dict(dt_limit=3.0), ValueError, ["dt_limit"]),
    ({}, dict(chunk_size=0), ValueError, ["chunk_size"]),
    ({}, dict(seq_meta=dict(seq_idx=torch.zeros(2, 9, dtype=torch.int32), offsets=1)), ValueError,
     ["seq_meta", "offsets"]),
])
def test_bad_input_is_named(bad, kwargs, error, words):
    t = {k: torch.randn(*s) for k, s in GOOD.items()}
    t.update(bad)
    chunk = kwargs.pop("chunk_size", 4)
    with pytest.raises(error) as info:
        ops.ssd_chunk_scan(t["X"], t["dt"], t["A"], t["B"], t["C"], chunk, **kwargs)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_cu_seqlens_must_be_nondecreasing():
    t = {k: torch.randn(1, *s[1:]) for k, s in GOOD.items() if len(s) > 1}
    with pytest.raises(ValueError, match="cu_seqlens.*nondecreasing"):
        ops.ssd_chunk_scan(t["X"], t["dt"], torch.randn(4), t["B"], t["C"], 4,
                           cu_seqlens=torch.tensor([0, 6, 3, 9]), return_varlen_states=True)


def test_split_conv_bad_input_is_named():
    s = split_inputs(1, 5, 2, 4, 1, 3, 4, 0, torch.float32)
    with pytest.raises(ValueError, match="headdim"):
        ops.mamba_split_conv1d_scan_combined(*s.values(), 8)
    with pytest.raises(ValueError, match="zxbcdt"):
        ops.mamba_split_conv1d_scan_combined(s["zxbcdt"][..., :-1], *list(s.values())[1:], 8, headdim=4)
