"""mamba_split_conv1d_scan_combined (the fused custom op pair) against mamba_split_conv1d_scan_ref in
float64 on every backend: outputs, final states and the gradient of every input, dtypes, each
optional argument, initial_states / seq_idx / return_final_states, what autograd saves, compile."""
import pytest
import torch

import ssm.ops as ops
from ssm.ops import conv, ssd_split
from tests.ops.harness import assert_close, backends, device_of, lowp_bound, rand, rel_err, use_backend

P, W = 4, 4


def make_split(batch, L, H, G, N, d_nonssm, device, dtype=torch.float32, out_dim=7, noncontig=False):
    """Inputs of one Mamba-2 block path with an RMSNorm and an out_proj with bias."""
    dim, conv_dim = H * P, H * P + 2 * G * N
    width = 2 * d_nonssm + 2 * dim + 2 * G * N + H
    inp = dict(zxbcdt=rand(batch, L, width, device=device, noncontig=noncontig),
               conv1d_weight=rand(conv_dim, 1, W, device=device, scale=0.5), conv1d_bias=rand(conv_dim, device=device),
               dt_bias=rand(H, device=device, scale=0.5), A=-torch.rand(H, device=device) - 0.1,
               D=rand(H, device=device), rmsnorm_weight=rand(dim, device=device),
               outproj_weight=rand(out_dim, d_nonssm + dim, device=device, scale=0.3),
               outproj_bias=rand(out_dim, device=device))
    return {k: v.to(dtype) for k, v in inp.items()}


def run(fn, inp, cast, backend, dout, dfinal, **kw):
    leaves = {k: v if v is None or not v.is_floating_point() else cast(v).requires_grad_() for k, v in inp.items()}
    with use_backend(backend):
        res = fn(**leaves, chunk_size=8, **kw)
        out, final = res if kw.get("return_final_states") else (res, None)
        loss = (out * dout.to(out.dtype)).sum() + (0 if final is None else (final * dfinal.to(final.dtype)).sum())
        loss.backward()
    grads = {k: v.grad for k, v in leaves.items() if v is not None and v.is_floating_point()}
    return out, final, grads


def compare(backend, inp, dtype, **kw):
    """Fused on ``backend`` vs the float64 reference (and, in low precision, the bound of twice
    the reference's own error run in ``dtype``)."""
    z = inp["zxbcdt"]
    H = inp["A"].shape[0]
    width = inp["outproj_weight"].shape[0] if inp.get("outproj_weight") is not None else None
    dout = torch.randn(*z.shape[:2], width or kw["_width"], device=z.device)
    dfinal = torch.randn(z.shape[0], H, P, (inp["conv1d_weight"].shape[0] - H * P) // (2 * kw.get("ngroups", 1)),
                         device=z.device)
    kw = {k: v for k, v in kw.items() if k != "_width"}
    got = run(ops.mamba_split_conv1d_scan_combined, inp, lambda v: v.detach().clone(), backend, dout, dfinal, **kw)
    want = run(ops.mamba_split_conv1d_scan_ref, inp, lambda v: v.detach().double(), "reference", dout, dfinal, **kw)
    lowp = None if dtype == torch.float32 else run(ops.mamba_split_conv1d_scan_ref, inp, lambda v: v.detach().clone(),
                                                   "reference", dout, dfinal, **kw)
    check(got[0], want[0], lowp and lowp[0], dtype, "out")
    if want[1] is not None:
        assert got[1].dtype == torch.float32
        check(got[1], want[1], lowp and lowp[1], dtype, "final_states")
    for k in want[2]:
        check(got[2][k], want[2][k], lowp and lowp[2][k], dtype, f"d{k}")


def check(got, want, lowp, dtype, name):
    if lowp is None:
        assert_close(got, want, dtype, name, factor=4.0)
    else:
        err, bound = rel_err(got, want), lowp_bound(rel_err(lowp, want), dtype, 2e-3)
        assert err <= bound, f"{name}: relative error {err:.3g} > {bound:.3g} (twice the {dtype} reference's + one rounding)"


def state_args(inp, batch, L, H, N, device):
    return dict(initial_states=rand(batch, H, P, N, device=device),
                seq_idx=torch.sort(torch.randint(0, 3, (batch, L), device=device), dim=1).values.to(torch.int32))


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("norm_before_gate", [True, False])
@pytest.mark.parametrize("keep_y", [True, False])
def test_matches_reference_with_gradients(backend, dtype, norm_before_gate, keep_y, monkeypatch):
    """keep_y: the backward takes the forward's scan output (ssd_split.KEEP_Y) or recomputes it."""
    monkeypatch.setattr(ssd_split, "KEEP_Y", keep_y)
    dev = device_of(backend)
    inp = make_split(2, 21, 4, 2, 5, 3, dev, dtype)
    inp.update(state_args(inp, 2, 21, 4, 5, dev))
    compare(backend, inp, dtype, headdim=P, ngroups=2, norm_before_gate=norm_before_gate, return_final_states=True)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("shape", [(1, 1, 3, 1, 3, 0), (3, 45, 5, 1, 7, 2), (1, 4100, 2, 1, 4, 0)],
                         ids=["L1", "odd", "long"])
def test_shapes_noncontiguous(backend, shape):
    batch, L, H, G, N, d_nonssm = shape
    inp = make_split(batch, L, H, G, N, d_nonssm, device_of(backend), noncontig=True)
    compare(backend, inp, torch.float32, headdim=P, ngroups=G)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("variant", ["no_norm_z_gate", "no_outproj", "D_hdim_limit", "no_act_no_bias", "states"])
def test_optional_arguments(backend, variant):
    dev = device_of(backend)
    inp = make_split(2, 19, 3, 1, 4, 2, dev)
    kw = dict(headdim=P, ngroups=1)
    if variant == "no_norm_z_gate":
        inp["rmsnorm_weight"] = None
    elif variant == "no_outproj":
        inp.update(outproj_weight=None, outproj_bias=None)
        kw["_width"] = 2 + 3 * P
    elif variant == "D_hdim_limit":
        inp["D"] = rand(3, P, device=dev)
        kw.update(headdim=None, dt_limit=(0.05, 0.6))
    elif variant == "no_act_no_bias":
        inp.update(conv1d_bias=None, outproj_bias=None)
        kw["activation"] = None
    else:
        inp.update(state_args(inp, 2, 19, 3, 4, dev))
        inp["seq_idx"] = None
        kw["return_final_states"] = True
    compare(backend, inp, torch.float32, **kw)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 300, 8, 1, 8, 0), (3, 45, 5, 1, 7, 2)], ids=["aligned", "odd"])
def test_channels_last_conv(backend, dtype, shape, monkeypatch):
    """The conv takes xBC as the channels-last slice of zxbcdt (no copy) on every backend when its
    device is listed (CUDA by default; the CPU here too): widths of 16-byte words and odd ones."""
    monkeypatch.setattr(conv, "CHANNELS_LAST_DEVICES", ("cuda", "cpu"))
    batch, L, H, G, N, d_nonssm = shape
    dev = device_of(backend)
    inp = make_split(batch, L, H, G, N, d_nonssm, dev, dtype)
    inp.update(state_args(inp, batch, L, H, N, dev))
    conv_calls = []
    real_fwd = ssd_split._conv_fwd

    def spy(x, *args):
        conv_calls.append(x.stride(1))
        return real_fwd(x, *args)
    monkeypatch.setattr(ssd_split, "_conv_fwd", spy)
    compare(backend, inp, dtype, headdim=P, ngroups=G, return_final_states=True)
    assert conv_calls and all(s == 1 for s in conv_calls), f"conv inputs not channels-last: strides {conv_calls}"


SMALL = ("conv1d_weight", "conv1d_bias", "dt_bias", "A", "D", "rmsnorm_weight")
# CUDA sums these gradients with float atomics (the conv's and the gated norm's backward), in any order
ATOMIC = ("conv1d_weight", "conv1d_bias", "rmsnorm_weight")


def assert_same(got, want, name, atomic):
    """Bitwise, or for an atomically summed bf16 gradient within one bf16 rounding of each element."""
    if not atomic:
        assert torch.equal(got, want), f"{name} differs with the parameters cast inside"
        return
    diff = (got.float() - want.float()).abs()
    assert (diff <= 2.0 ** -7 * want.float().abs() + 1e-6 * want.float().abs().max()).all(), name


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("D_hdim", [False, True])
def test_A_is_log_and_bf16_parameters_match_cast_ones(backend, D_hdim):
    """The small parameters in bf16 as they are (cast inside the op) and A_is_log (A = -exp(A_log) inside) against
    the same parameters cast to float32 and A = -exp(A_log.float()) by autograd before the call: the same output
    and gradients, bitwise (each gradient rounded once to its parameter's dtype either way)."""
    dev = device_of(backend)
    inp = make_split(2, 21, 4, 2, 5, 3, dev, torch.bfloat16)
    inp["A"] = rand(4, device=dev, scale=0.5).to(torch.bfloat16)  # A_log
    inp["D"] = rand(4, P, device=dev).to(torch.bfloat16) if D_hdim else inp["D"]
    dout = torch.randn(2, 21, 7, device=dev)

    def run(inside):
        leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
        args = dict(leaves)
        if not inside:
            args.update({k: leaves[k].float() for k in SMALL})
            args["A"] = -torch.exp(leaves["A"].float())
        with use_backend(backend):
            out = ops.mamba_split_conv1d_scan_combined(**args, chunk_size=8, headdim=None if D_hdim else P,
                                                       ngroups=2, A_is_log=inside)
            (out.float() * dout).sum().backward()
        return out, {k: v.grad for k, v in leaves.items()}
    want, got = run(False), run(True)
    assert torch.equal(got[0], want[0]), "output differs with the parameters cast inside"
    for k, g in want[1].items():
        assert got[1][k].dtype == g.dtype and got[1][k].shape == g.shape, k
        assert_same(got[1][k], g, f"d{k}", backend == "cuda" and k in ATOMIC)


@pytest.mark.parametrize("backend", backends())
def test_small_parameters_without_cast_nodes(backend):
    """bf16 small parameters reach the fused op as they are: the output's node takes them straight from their
    leaves (no cast nodes per call)."""
    inp = {k: v.requires_grad_() for k, v in make_split(2, 21, 4, 1, 5, 0, device_of(backend), torch.bfloat16).items()}
    with use_backend(backend):
        out = ops.mamba_split_conv1d_scan_combined(**inp, chunk_size=8, headdim=P, A_is_log=True)
    leaves = {id(f.variable) for f, _ in out.grad_fn.next_functions if f is not None and hasattr(f, "variable")}
    assert all(id(inp[k]) in leaves for k in SMALL), "a small parameter went through an autograd node"


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_proj_weight_matches_linear_outside(backend, dtype):
    """in_proj_weight (zxbcdt = u in_proj_weight^T inside the op, as the Mamba2 module calls it) against F.linear
    before the call: the same output and gradients (d u and d in_proj_weight included): bitwise on CUDA (the same
    GEMMs), within a rounding elsewhere (the CPU's half matmuls differ with and without autograd)."""
    dev = device_of(backend)
    inp = make_split(2, 21, 4, 2, 5, 3, dev, dtype)
    width, d_model = inp["zxbcdt"].shape[-1], 6
    u = rand(2, 21, d_model, device=dev).to(dtype)
    in_w = rand(width, d_model, device=dev, scale=0.5).to(dtype)
    dout = torch.randn(2, 21, 7, device=dev)

    def run(inside):
        leaves = {k: v.clone().requires_grad_() for k, v in {**drop(inp, "zxbcdt"), "u": u, "w": in_w}.items()}
        args = {k: v for k, v in leaves.items() if k not in ("u", "w")}
        with use_backend(backend):
            if inside:
                out = ops.mamba_split_conv1d_scan_combined(leaves["u"], **args, chunk_size=8, headdim=P, ngroups=2,
                                                           in_proj_weight=leaves["w"])
            else:
                zxbcdt = torch.nn.functional.linear(leaves["u"], leaves["w"])
                out = ops.mamba_split_conv1d_scan_combined(zxbcdt, **args, chunk_size=8, headdim=P, ngroups=2)
            (out.float() * dout).sum().backward()
        return out, {k: v.grad for k, v in leaves.items()}
    want, got = run(False), run(True)
    exact = backend == "cuda"
    for key, g, w in [("out", got[0], want[0])] + [(k, got[1][k], want[1][k]) for k in want[1]]:
        name = key if key == "out" else f"d{key}"
        assert g.dtype == w.dtype and g.shape == w.shape, name
        if exact and key not in ATOMIC:
            assert torch.equal(g, w), f"{name} differs with in_proj inside the op"
        else:
            assert_close(g, w.double(), dtype, name)


def drop(d, *keys):
    return {k: v for k, v in d.items() if k not in keys}


@pytest.mark.parametrize("backend", backends())
def test_derived_A_follows_updates(backend):
    """Without autograd the op keeps -exp(A_log) per parameter version: an in-place update of A_log changes the
    output as a new A would."""
    dev = device_of(backend)
    inp = make_split(2, 21, 4, 1, 5, 0, dev)
    A_log = torch.nn.Parameter(rand(4, device=dev, scale=0.5))
    args = {k: v for k, v in inp.items() if k != "A"}
    with use_backend(backend), torch.no_grad():
        first = ops.mamba_split_conv1d_scan_combined(**args, A=A_log, chunk_size=8, headdim=P, A_is_log=True)
        A_log.add_(0.5)
        got = ops.mamba_split_conv1d_scan_combined(**args, A=A_log, chunk_size=8, headdim=P, A_is_log=True)
        want = ops.mamba_split_conv1d_scan_combined(**args, A=-torch.exp(A_log), chunk_size=8, headdim=P)
    assert not torch.equal(first, got), "the update must change the output"
    assert torch.equal(got, want), "the kept A was not renewed after the in-place update"


@pytest.mark.parametrize("keep_y", [True, False])
def test_saves_only_inputs(keep_y, monkeypatch):
    """Autograd keeps zxbcdt, the parameters, the scan output y (B, L, dim) with ssd_split.KEEP_Y
    (as mamba_ssm keeps out_x) and nothing (B, L, dim)-sized besides: no conv or norm output."""
    monkeypatch.setattr(ssd_split, "KEEP_Y", keep_y)
    batch, L, H = 2, 256, 8
    inp = {k: v.requires_grad_() for k, v in make_split(batch, L, H, 1, 8, 0, "cpu").items()}
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes(), tuple(t.shape))
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ops.mamba_split_conv1d_scan_combined(**inp, chunk_size=64, headdim=P)
    inputs = {v.untyped_storage().data_ptr() for v in inp.values()}
    extra = {p: s for p, s in saved.items() if p not in inputs and s[0] >= batch * L * H * P}
    y_bytes = batch * L * H * P * inp["zxbcdt"].element_size()
    assert sorted(s for s in extra.values()) == ([(y_bytes, (batch, L, H * P))] if keep_y else []), extra
    assert sum(s[0] for s in saved.values()) < 1.1 * inp["zxbcdt"].nbytes + keep_y * y_bytes + 65536


@pytest.mark.parametrize("backend", backends())
def test_autocast_runs_in_its_dtype(backend):
    """Under autocast (bf16) the fused path runs on the autocast dtype's zxbcdt and out_proj: the same output as a
    call given them cast by hand, and float32 gradients for the float32 parameters."""
    device = device_of(backend)
    inp = make_split(2, 21, 3, 1, 4, 0, device)
    cast = {k: v.to(torch.bfloat16) if k in ("zxbcdt", "outproj_weight", "outproj_bias") else v for k, v in inp.items()}
    leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
    with use_backend(backend):
        want = ops.mamba_split_conv1d_scan_combined(**cast, chunk_size=8, headdim=P)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            got = ops.mamba_split_conv1d_scan_combined(**leaves, chunk_size=8, headdim=P)
        got.float().sum().backward()
    assert got.dtype == torch.bfloat16 and torch.equal(got, want), "autocast output differs from the bf16 call"
    assert all(v.grad is not None and v.grad.dtype == torch.float32 for v in leaves.values())


def test_torch_compile_matches_eager():
    def fn(inp, init, seq_idx):
        return ops.mamba_split_conv1d_scan_combined(**inp, chunk_size=8, headdim=P, ngroups=2, initial_states=init,
                                                    seq_idx=seq_idx, return_final_states=True)
    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for L in (13, 30):
        inp = make_split(2, L, 4, 2, 5, 3, "cpu")
        extra = state_args(inp, 2, L, 4, 5, "cpu")
        results = []
        for f in (compiled, fn):
            leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
            out, final = f(leaves, extra["initial_states"], extra["seq_idx"])
            (out.sum() + final.sum()).backward()
            results.append((out, final, {k: v.grad for k, v in leaves.items()}))
        (out, final, grads), (want, want_final, want_grads) = results
        assert_close(out, want.detach().double(), torch.float32, "compiled out")
        assert_close(final, want_final.double(), torch.float32, "compiled final")
        for k in grads:
            assert_close(grads[k], want_grads[k].double(), torch.float32, f"compiled d{k}")


def test_bad_input_is_named():
    inp = make_split(1, 9, 2, 1, 4, 0, "cpu")
    with pytest.raises(ValueError, match="initial_states"):
        ops.mamba_split_conv1d_scan_combined(**inp, chunk_size=8, headdim=P, initial_states=torch.randn(1, 2, P, 3))
    with pytest.raises(ValueError, match="seq_idx"):
        ops.mamba_split_conv1d_scan_combined(**inp, chunk_size=8, headdim=P,
                                             seq_idx=torch.zeros(1, 8, dtype=torch.int32))
