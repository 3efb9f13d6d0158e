"""mamba_inner_fn (the fused custom op pair) against mamba_inner_ref in float64 on every backend:
outputs and the gradient of every input, each optional argument, B/C given, checkpoint levels,
what autograd saves, torch.compile; the RMS-normed variant (composition) and bad input."""
import pytest
import torch

import ssm.ops as ops
from ssm.ops import mamba_inner
from tests.ops.harness import REL_TOL, assert_close, backends, device_of, lowp_bound, rand, rel_err, use_backend


def make_inner(batch, D, L, N, rank, W, device, dtype=torch.float32, noncontig=False):
    """Inputs and parameters of one mixer, all in ``dtype`` (a model cast to bf16)."""
    inp = dict(
        xz=rand(batch, 2 * D, L, device=device, noncontig=noncontig),
        conv1d_weight=rand(D, 1, W, device=device, scale=0.5), conv1d_bias=rand(D, device=device),
        x_proj_weight=rand(rank + 2 * N, D, device=device, scale=D ** -0.5),
        delta_proj_weight=rand(D, rank, device=device, scale=rank ** -0.5),
        out_proj_weight=rand(7, D, device=device, scale=D ** -0.5), out_proj_bias=rand(7, device=device),
        A=-torch.exp(rand(D, N, device=device, scale=0.5)), D=rand(D, device=device),
        delta_bias=rand(D, device=device, scale=0.3) - 1.0)
    return {k: v.to(dtype) for k, v in inp.items()}


def run_both(backend, inp, dtype, **flags):
    """(out, grads) of mamba_inner_fn on ``backend``, of the float64 reference and of the reference run in
    ``dtype`` itself (the bound: what that dtype's own arithmetic gets wrong on these inputs)."""
    ref_flags = {k: v for k, v in flags.items() if k != "checkpoint_lvl"}

    def run(fn, cast, ctx, fl):
        leaves = {k: None if v is None else cast(v).requires_grad_() for k, v in inp.items()}
        with ctx:
            out = fn(**leaves, **fl)
        out.backward(dout.to(out.dtype))
        return out, {k: v.grad for k, v in leaves.items() if v is not None}
    xz = inp["xz"]
    dout = torch.randn(xz.shape[0], xz.shape[2], inp["out_proj_weight"].shape[0], device=xz.device)
    got = run(ops.mamba_inner_fn, lambda v: v.detach().clone(), use_backend(backend), flags)
    want = run(ops.mamba_inner_ref, lambda v: v.detach().double(), use_backend("reference"), ref_flags)
    lowp = run(ops.mamba_inner_ref, lambda v: v.detach().clone(), use_backend("reference"), ref_flags)
    return got, want, lowp


def check(got, want, lowp, dtype, name):
    if dtype == torch.float32:
        # the fixed tolerance, or twice the float32 reference's own error where the inputs are ill-conditioned
        # (L = 1: a gradient that is a short sum of cancelling terms came out at 3.8e-5 in the reference itself)
        err, bound = rel_err(got, want), max(2 * REL_TOL[dtype], lowp_bound(rel_err(lowp, want), dtype, 0.0))
        assert err <= bound, f"{name}: relative error {err:.3g} > {bound:.3g} (float32)"
    else:
        err, bound = rel_err(got, want), lowp_bound(rel_err(lowp, want), dtype, 1e-3)
        assert err <= bound, f"{name}: relative error {err:.3g} > {bound:.3g} (twice the {dtype} reference's + one rounding)"


def check_all(got, want, lowp, dtype):
    check(got[0], want[0], lowp and lowp[0], dtype, "out")
    for k in want[1]:
        check(got[1][k], want[1][k], lowp and lowp[1][k], dtype, f"d{k}")


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("checkpoint_lvl", [1, 2])
def test_planned_scan_matches_unplanned(backend, checkpoint_lvl):
    """A shape's first call makes the scan's plans (CUDA: forward, backward, level 2's rerun) and runs unplanned, the
    next runs planned: the same output and the same gradients of the parameters that no atomic sum reaches."""
    inp = make_inner(2, 6, 37, 4, 3, 4, device_of(backend), torch.bfloat16)
    mamba_inner._scan_plans._plans.clear()

    def run():
        leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
        with use_backend(backend):
            out = ops.mamba_inner_fn(**leaves, checkpoint_lvl=checkpoint_lvl)
            out.float().square().sum().backward()
        return out, {k: leaves[k].grad for k in ("A", "D", "delta_bias", "out_proj_weight", "delta_proj_weight")}
    first, second = run(), run()
    # (kept as [(guard, plan), ...] per key with torch's tensor guards, else plan per key)
    plans = [e[1] if isinstance(entries, list) else e for entries in mamba_inner._scan_plans._plans.values()
             for e in (entries if isinstance(entries, list) else [entries])]
    assert any(bool(p) for p in plans) == (backend == "cuda"), "the CUDA scan calls (only) must be planned"
    assert torch.equal(first[0], second[0]), "planned output differs"
    for k, g in first[1].items():
        assert torch.equal(g, second[1][k]), f"d{k} differs between the unplanned and the planned call"


SMALL = ("conv1d_weight", "conv1d_bias", "A", "D", "delta_bias")


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("checkpoint_lvl", [1, 2])
def test_A_is_log_matches_A(backend, checkpoint_lvl):
    """A_is_log (A_log given, A = -exp(A_log) inside the op) against A = -exp(A_log.float()) computed under
    autograd by the caller: the same output and gradients, bitwise (d A_log = dA * A either way)."""
    inp = make_inner(2, 6, 37, 4, 3, 4, device_of(backend), torch.bfloat16)
    A_log = rand(6, 4, device=device_of(backend), scale=0.5)

    def run(from_log):
        leaves = {k: v.clone().requires_grad_() for k, v in inp.items() if k != "A"}
        log = A_log.clone().requires_grad_()
        with use_backend(backend):
            A = log if from_log else -torch.exp(log.float())
            out = ops.mamba_inner_fn(**leaves, A=A, checkpoint_lvl=checkpoint_lvl, A_is_log=from_log)
            out.float().square().sum().backward()
        return out, {"A_log": log.grad, **{k: leaves[k].grad for k in ("D", "delta_bias", "conv1d_bias")}}
    want, got = run(False), run(True)
    assert torch.equal(got[0], want[0]), "output differs with A_is_log"
    for k, g in want[1].items():
        assert torch.equal(got[1][k], g), f"d{k} differs with A_is_log"


@pytest.mark.parametrize("backend", backends())
def test_small_parameters_without_cast_nodes(backend):
    """bf16 small parameters reach the fused op as they are: the output's node takes them straight from their
    leaves (no cast nodes per call), and their gradients come back in their dtypes and shapes."""
    inp = {k: v.requires_grad_() for k, v in make_inner(2, 6, 21, 4, 3, 4, device_of(backend),
                                                           torch.bfloat16).items()}
    with use_backend(backend):
        out = ops.mamba_inner_fn(**inp)
    leaves = {id(f.variable) for f, _ in out.grad_fn.next_functions if f is not None and hasattr(f, "variable")}
    assert all(id(inp[k]) in leaves for k in SMALL), "a small parameter went through an autograd node"
    out.float().sum().backward()
    for k in SMALL:
        assert inp[k].grad.dtype == inp[k].dtype and inp[k].grad.shape == inp[k].shape, k


@pytest.mark.parametrize("backend", backends())
def test_derived_A_follows_updates(backend):
    """Without autograd the op keeps -exp(A_log) per parameter version: an in-place update of A_log changes the
    output as a new A would."""
    inp = make_inner(2, 6, 21, 4, 3, 4, device_of(backend))
    A_log = torch.nn.Parameter(rand(6, 4, device=device_of(backend), scale=0.5))
    with use_backend(backend), torch.no_grad():
        args = {k: v for k, v in inp.items() if k != "A"}
        first = ops.mamba_inner_fn(**args, A=A_log, A_is_log=True)
        A_log.add_(0.5)
        got = ops.mamba_inner_fn(**args, A=A_log, A_is_log=True)
        want = ops.mamba_inner_fn(**args, A=-torch.exp(A_log))
    assert not torch.equal(first, got), "the update must change the output"
    assert torch.equal(got, want), "the kept A was not renewed after the in-place update"


def with_in_proj(inp, d_model=5):
    """The inputs with xz replaced by in_proj's input u (B, L, d_model) and in_proj_weight (2D, d_model)."""
    batch, two_d, L = inp["xz"].shape
    dev, dtype = inp["xz"].device, inp["xz"].dtype
    u = rand(batch, L, d_model, device=dev).to(dtype)
    return {**drop(inp, "xz"), "xz": u, "in_proj_weight": rand(two_d, d_model, device=dev, scale=0.5).to(dtype)}


def in_proj_ref(xz, in_proj_weight, **kw):
    """mamba_inner_ref of xz = in_proj_weight @ u^T (u given as xz)."""
    return ops.mamba_inner_ref(torch.einsum("od,bld->bol", in_proj_weight, xz), **kw)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("checkpoint_lvl", [0, 1, 2])
def test_in_proj_weight_matches_reference(backend, dtype, checkpoint_lvl):
    """in_proj_weight (xz = in_proj_weight @ u^T inside the op, as the Mamba1 module calls it): output and every
    gradient, d u and d in_proj_weight included, against the float64 reference of the composition."""
    inp = with_in_proj(make_inner(2, 6, 37, 4, 3, 4, device_of(backend), dtype))

    def run(fn, cast, ctx):
        leaves = {k: None if v is None else cast(v).requires_grad_() for k, v in inp.items()}
        with ctx:
            out = fn(**leaves)
        out.backward(dout.to(out.dtype))
        return out, {k: v.grad for k, v in leaves.items() if v is not None}
    dout = torch.randn(2, 37, 7, device=inp["xz"].device)
    got = run(lambda **kw: ops.mamba_inner_fn(**kw, checkpoint_lvl=checkpoint_lvl), lambda v: v.detach().clone(),
              use_backend(backend))
    want = run(in_proj_ref, lambda v: v.detach().double(), use_backend("reference"))
    lowp = run(in_proj_ref, lambda v: v.detach().clone(), use_backend("reference"))
    assert set(got[1]) == set(inp)
    check_all(got, want, lowp, dtype)


def test_in_proj_weight_compiles():
    """torch.compile of the in_proj_weight form (its fake outputs: xz's view layout) against eager."""
    compiled = torch.compile(ops.mamba_inner_fn, fullgraph=True, dynamic=True)
    for L in (13, 21):
        inp = with_in_proj(make_inner(2, 6, L, 4, 3, 4, "cpu"))
        runs = []
        for fn in (compiled, ops.mamba_inner_fn):
            leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
            out = fn(**leaves)
            out.sum().backward()
            runs.append((out, leaves))
        (out, leaves), (ref, want) = runs
        assert_close(out, ref.detach().double(), torch.float32, "compiled out")
        for k in inp:
            assert_close(leaves[k].grad, want[k].grad.double(), torch.float32, f"compiled d{k}")


@pytest.mark.parametrize("backend", backends())
def test_autocast_casts_projections(backend):
    """Under autocast (bf16) the fused path runs on the autocast dtype's xz and projection weights: the
    same output as a call given them cast by hand, and float32 gradients for the float32 weights."""
    device = device_of(backend)
    inp = make_inner(2, 6, 21, 4, 3, 4, device)
    cast = {k: v.to(torch.bfloat16) if k in ("xz", "x_proj_weight", "delta_proj_weight", "out_proj_weight",
                                            "out_proj_bias") else v for k, v in inp.items()}
    leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
    with use_backend(backend):
        want = ops.mamba_inner_fn(**cast)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            got = ops.mamba_inner_fn(**leaves)
        got.float().sum().backward()
    assert got.dtype == torch.bfloat16 and torch.equal(got, want), "autocast output differs from the bf16 call"
    assert all(v.grad is not None and v.grad.dtype == torch.float32 for v in leaves.values())


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("checkpoint_lvl", [0, 1, 2])
def test_matches_reference_with_gradients(backend, dtype, checkpoint_lvl):
    inp = make_inner(2, 6, 13, 4, 3, 4, device_of(backend), dtype)
    check_all(*run_both(backend, inp, dtype, checkpoint_lvl=checkpoint_lvl), dtype)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("shape", [(1, 5, 1, 3, 2, 4), (3, 17, 70, 5, 4, 3)], ids=["L1", "odd"])
@pytest.mark.parametrize("checkpoint_lvl", [0, 1, 2])
def test_shapes_noncontiguous(backend, shape, checkpoint_lvl):
    """L = 70 crosses the CUDA scan's 16-step chunks: level 0 hands the forward's chunk states on."""
    inp = make_inner(*shape, device_of(backend), noncontig=True)
    check_all(*run_both(backend, inp, torch.float32, checkpoint_lvl=checkpoint_lvl), torch.float32)


@pytest.mark.parametrize("backend", [b for b in backends() if b.values[0] != "reference"])
def test_long_sequence_matches_composition(backend):
    """L = 4100 against the composition of the public ops on the same backend (each op is checked
    against the float64 reference at long lengths in its own tests; the reference itself is too
    slow here)."""
    inp = make_inner(1, 8, 4100, 4, 2, 4, device_of(backend), noncontig=True)
    dout = torch.randn(1, 4100, 7, device=inp["xz"].device)
    results = []
    for fused in (True, False):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inp.items()}
        with use_backend(backend):
            out = ops.mamba_inner_fn(**leaves) if fused else composed(**leaves)
            out.backward(dout)
        results.append((out, {k: v.grad for k, v in leaves.items()}))
    (out, grads), (want, want_grads) = results
    assert_close(out, want.double(), torch.float32, "out")
    for k in grads:
        assert_close(grads[k], want_grads[k].double(), torch.float32, f"d{k}", factor=3.0)


def composed(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias, A,
             D, delta_bias):
    return mamba_inner._inner(ops.dw_causal_conv, ops.selective_scan, xz, conv1d_weight, conv1d_bias,
                              x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias, A, None, None, D,
                              delta_bias, None, None, True, None)


def model_layout(inp, batch, D, L):
    """xz as the module makes it: a (B, 2D, L) view of in_proj's (2D, B*L) output."""
    buf = inp["xz"].permute(1, 0, 2).contiguous().view(2 * D, batch * L)
    return {**inp, "xz": buf.view(2 * D, batch, L).permute(1, 0, 2)}


@pytest.mark.parametrize("backend", [b for b in backends() if b.values[0] == "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("checkpoint_lvl", [0, 1, 2])
def test_model_layout(backend, dtype, checkpoint_lvl):
    """N = 16, L a multiple of 8, xz a view of in_proj's output: on CUDA the scan takes its rows
    kernels (forward and backward) through the transposed projections, as in the model (the CPU
    paths of this layout: test_rows_layout_on_cpu)."""
    batch, D, L = 2, 64, 80
    inp = model_layout(make_inner(batch, D, L, 16, 4, 4, device_of(backend), dtype), batch, D, L)
    check_all(*run_both(backend, inp, dtype, checkpoint_lvl=checkpoint_lvl), dtype)


@pytest.fixture
def rows_on_cpu(monkeypatch):
    """The transposed (rows layout) projections on the CPU too, to check them without a GPU."""
    monkeypatch.setattr(mamba_inner, "ROWS_DEVICES", ("cpu", "cuda"))


@pytest.mark.parametrize("variant", ["plain", "proj_bias", "given_B", "extra_rows", "no_biases"])
@pytest.mark.parametrize("checkpoint_lvl", [0, 1])
def test_rows_layout_on_cpu(rows_on_cpu, variant, checkpoint_lvl):
    inp = model_layout(make_inner(2, 6, 16, 4, 3, 4, "cpu"), 2, 6, 16)
    if variant == "proj_bias":
        inp.update(B_proj_bias=rand(4), C_proj_bias=rand(4))
    elif variant == "given_B":
        inp.update(B=rand(2, 4, 16))
    elif variant == "extra_rows":  # x_proj with rows past dt_rank + 2 d_state: C is the last N
        inp["x_proj_weight"] = rand(3 + 2 * 4 + 2, 6, scale=6 ** -0.5)
    elif variant == "no_biases":
        inp.update(conv1d_bias=None, out_proj_bias=None)
    check_all(*run_both("cpu", inp, torch.float32, checkpoint_lvl=checkpoint_lvl), torch.float32)


def test_rows_layout_backward_copies_nothing(rows_on_cpu):
    """The rows-layout backward writes dx and dz into d xz's halves (in xz's strides) and computes
    dxc in place: no (B, D, L)-sized copy_ besides y^T for d out_proj_w (a clone, not a copy_)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    batch, D, L = 2, 6, 16
    inp = {k: v.requires_grad_() for k, v in model_layout(make_inner(batch, D, L, 4, 3, 4, "cpu"),
                                                          batch, D, L).items()}
    out = ops.mamba_inner_fn(**inp)
    copies = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.copy_.default, torch.ops.aten.add.Tensor) and args[0].numel() >= batch * D * L:
                copies.append((str(func), tuple(args[0].shape)))
            return func(*args, **(kwargs or {}))
    with Record():
        out.backward(torch.randn_like(out))
    assert copies == [], copies
    assert inp["xz"].grad.stride() == inp["xz"].stride()


@pytest.mark.parametrize("checkpoint_lvl", [0, 1])
def test_rows_layout_on_cpu_bf16(rows_on_cpu, checkpoint_lvl):
    inp = model_layout(make_inner(2, 8, 24, 16, 4, 4, "cpu", torch.bfloat16), 2, 8, 24)
    check_all(*run_both("cpu", inp, torch.bfloat16, checkpoint_lvl=checkpoint_lvl), torch.bfloat16)


def drop(inp, *names):
    return {k: v for k, v in inp.items() if k not in names}


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("variant", ["no_D", "no_biases", "no_softplus", "proj_bias"])
def test_optional_arguments(backend, variant):
    dev = device_of(backend)
    inp = make_inner(2, 6, 11, 4, 3, 4, dev)
    flags = {}
    if variant == "no_D":
        inp = drop(inp, "D", "delta_bias")
    elif variant == "no_biases":
        inp.update(conv1d_bias=None, out_proj_bias=None)
    elif variant == "no_softplus":
        flags["delta_softplus"] = False  # delta used raw: kept positive (a small projection on a bias >= 0.5)
        inp["delta_bias"] = inp["delta_bias"].abs() + 0.5
        inp["delta_proj_weight"] = inp["delta_proj_weight"] * 0.1
    else:
        inp.update(B_proj_bias=rand(4, device=dev), C_proj_bias=rand(4, device=dev))
    check_all(*run_both(backend, inp, torch.float32, **flags), torch.float32)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("form", ["variable", "grouped", "constant"])
def test_given_B_C(backend, form):
    dev = device_of(backend)
    inp = make_inner(2, 6, 11, 4, 3, 4, dev)
    shape = {"variable": (2, 4, 11), "grouped": (2, 2, 4, 11), "constant": (6, 4)}[form]
    inp.update(B=rand(*shape, device=dev), C=rand(*shape, device=dev))
    check_all(*run_both(backend, inp, torch.float32), torch.float32)


def saved_bytes(fn):
    """Storages autograd saves while running fn(): {data_ptr: (nbytes, shape)}."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes(), tuple(t.shape))
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


@pytest.mark.parametrize("checkpoint_lvl", [0, 1, 2])
def test_saves_only_inputs(checkpoint_lvl):
    """checkpoint_lvl >= 2: autograd keeps xz, the parameters and nothing (B, D, L)-sized besides
    (no conv output, dt or scan output); level 1 keeps the scan output (as y^T, (B, L, D); on CUDA
    the scan's chunk states too: not on this CPU test), level 0 the conv output as well."""
    batch, D, L = 2, 32, 256
    inp = {k: v.requires_grad_() for k, v in make_inner(batch, D, L, 4, 3, 4, "cpu").items()}
    saved = saved_bytes(lambda: ops.mamba_inner_fn(**inp, checkpoint_lvl=checkpoint_lvl))
    inputs = {v.untyped_storage().data_ptr() for v in inp.values()}
    extra = {p: s for p, s in saved.items() if p not in inputs and s[0] >= batch * D * L}
    if checkpoint_lvl < 2:
        want = [(batch, D, L), (batch, L, D)] if checkpoint_lvl == 0 else [(batch, L, D)]
        assert sorted(s[1] for s in extra.values()) == want, extra
    else:
        assert not extra, f"saved beyond the inputs: {extra}"
        assert sum(s[0] for s in saved.values()) < 1.1 * inp["xz"].nbytes + 65536


def test_rms_and_given_bc():
    inp = make_inner(1, 4, 9, 3, 2, 3, "cpu")
    B, C = rand(1, 1, 3, 9), rand(1, 1, 3, 9)
    out = ops.mamba_inner_fn(**inp, B=B, C=C)
    want = ops.mamba_inner_ref(**{k: v.double() for k, v in inp.items()}, B=B.double(), C=C.double())
    assert_close(out, want, torch.float32, "out with B, C given")
    w = rand(3)
    normed = ops.mamba_inner_fn(**inp, b_rms_weight=w, c_rms_weight=w, dt_rms_weight=rand(4))
    assert normed.shape == out.shape and not torch.isnan(normed).any()
    assert (normed - ops.mamba_inner_fn(**inp)).abs().max() > 1e-3, "rms weights must change the output"


def test_torch_compile_matches_eager():
    inp = make_inner(2, 6, 13, 4, 3, 4, "cpu")
    compiled = torch.compile(ops.mamba_inner_fn, fullgraph=True, dynamic=True)
    for L in (13, 21):
        inp = make_inner(2, 6, L, 4, 3, 4, "cpu")
        leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
        out = compiled(**leaves)
        out.sum().backward()
        want = {k: v.clone().requires_grad_() for k, v in inp.items()}
        ref = ops.mamba_inner_fn(**want)
        ref.sum().backward()
        assert_close(out, ref.detach().double(), torch.float32, "compiled out")
        for k in inp:
            assert_close(leaves[k].grad, want[k].grad.double(), torch.float32, f"compiled d{k}")


def test_bad_input_is_named():
    inp = make_inner(1, 4, 9, 3, 2, 3, "cpu")
    with pytest.raises(ValueError, match="xz"):
        ops.mamba_inner_fn(**{**inp, "xz": torch.randn(1, 7, 9)})
    with pytest.raises(ValueError, match="x_proj_weight"):
        ops.mamba_inner_fn(**{**inp, "x_proj_weight": torch.randn(5, 4)})
    u = with_in_proj(inp)
    with pytest.raises(ValueError, match="in_proj_weight"):
        ops.mamba_inner_fn(**{**u, "in_proj_weight": torch.randn(8, 4)})
    with pytest.raises(ValueError, match="in_proj_weight"):
        ops.mamba_inner_fn(**{**u, "in_proj_weight": torch.randn(7, 5)})
