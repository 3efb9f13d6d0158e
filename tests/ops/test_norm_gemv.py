"""gated_norm_linear / small_linear (decode projections, optionally with Mamba-2's gated RMSNorm
folded in) on every backend against the float64 reference, the CUDA kernel against the composition
of the separate ops (long rows past the register-held weight chunks, groups, batch up to 4), the
switches, bad input."""
import pytest
import torch
import torch.nn as nn

from ssm.ops import conv_state_step as css
from ssm.ops import norm_gemv as ng
from ssm.ops.conv import causal_conv1d_update
from ssm.ops.gated_norm import rmsnorm_fn
from ssm.ops.python import reference
from tests.ops.harness import DTYPES, assert_close, backends, device_of, rand, use_backend

CASES = [  # (batch, K, M, group_size)
    (1, 64, 24, None),
    (3, 96, 40, 32),
    (4, 256, 7, 64),
    (2, 1536, 77, 768),
]


def make(batch, K, M, gs, dtype, device, bias=True):
    xz = rand(batch, 2 * K + 8, dtype=dtype, device=device)  # strided views, as in Mamba2.step
    return dict(x=xz[:, :K], z=xz[:, K + 8:], nw=1.0 + rand(K, dtype=dtype, device=device, scale=0.1),
                W=rand(M, K, dtype=dtype, device=device, scale=K ** -0.5),
                b=rand(M, dtype=dtype, device=device) if bias else None, gs=gs)


def ref_out(inp, before):
    x, z, nw, W, b = (None if t is None else t.double() for t in (inp["x"], inp["z"], inp["nw"], inp["W"], inp["b"]))
    y = reference.gated_rms_norm(x, nw, None, z, 1e-5, inp["gs"], before)
    return y @ W.t() + (0 if b is None else b)


def run(inp, before):
    return ng.gated_norm_linear(inp["x"], inp["z"], inp["nw"], inp["W"], inp["b"], group_size=inp["gs"], eps=1e-5,
                                norm_before_gate=before)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("before", [False, True])
def test_gated_norm_linear_matches_reference(backend, dtype, case, before):
    inp = make(*case, dtype, device_of(backend), bias=case[0] != 3)
    with use_backend(backend):
        out = run(inp, before)
    assert out.dtype == dtype and out.shape == (case[0], case[2])
    assert_close(out, ref_out(inp, before), dtype, "out")


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_small_linear_matches_reference(backend, dtype, case, monkeypatch):
    monkeypatch.setattr(ng, "PLAIN", True)
    batch, K, M, _ = case
    dev = device_of(backend)
    lin = nn.Linear(K, M, bias=batch != 3, device=dev, dtype=dtype)
    x = rand(batch, K + 8, dtype=dtype, device=dev)[:, 8:]
    with use_backend(backend), torch.no_grad():
        out = ng.small_linear(lin, x)
    ref = x.double() @ lin.weight.double().t() + (0 if lin.bias is None else lin.bias.double())
    assert out.dtype == dtype and out.shape == (batch, M)
    assert_close(out, ref, dtype, "out")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES + [(1, 4096, 300, 512), (2, 3072, 65, None), (1, 1536, 768, None)])
@pytest.mark.parametrize("before", [False, True])
def test_cuda_kernel_equals_separate_ops(dtype, case, before):
    inp = make(*case, dtype, torch.device("cuda"))
    groups = case[1] // (case[3] or case[1])
    assert ng._fusable(inp["x"], inp["z"], inp["W"], groups)
    out = run(inp, before)
    y = rmsnorm_fn(inp["x"], inp["nw"], None, z=inp["z"], eps=1e-5, group_size=inp["gs"], norm_before_gate=before)
    assert_close(out, torch.nn.functional.linear(y, inp["W"], inp["b"]), dtype, "out", factor=0.25)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [(1, 768, 50280), (2, 2048, 8513), (3, 4096, 2049), (4, 1536, 161)])
def test_streamed_kernel_many_rows_per_warp(dtype, case, monkeypatch):
    """More row groups than resident warps, rows of several units, odd M (lm_head, in_proj, out_proj,
    x_proj shapes): against float64, and bitwise the same run to run, with programmatic dependent
    launch off (SSM_PDL=0), with the register units pulled into L2 first (SSM_GEMV_PREFETCH_OWN=1) and in the
    register and ring forms (SSM_GEMV_RING: 0, or units through shared memory at several depths and grids)."""
    monkeypatch.setattr(ng, "PLAIN", True)
    batch, K, M = case
    dev = torch.device("cuda")
    lin = nn.Linear(K, M, bias=batch == 3, device=dev, dtype=dtype)
    x = rand(batch, K + 8, dtype=dtype, device=dev)[:, 8:]
    with torch.no_grad():
        out, again = ng.small_linear(lin, x), ng.small_linear(lin, x)
        monkeypatch.setenv("SSM_GEMV_PREFETCH_OWN", "1")
        pulled = ng.small_linear(lin, x)
        monkeypatch.delenv("SSM_GEMV_PREFETCH_OWN")
        rings = {}
        for ring in ("0", "2", "3:1", "4:1", "5:2"):
            monkeypatch.setenv("SSM_GEMV_RING", ring)
            rings[ring] = ng.small_linear(lin, x)
        monkeypatch.delenv("SSM_GEMV_RING")
        monkeypatch.setenv("SSM_PDL", "0")
        no_pdl = ng.small_linear(lin, x)
    ref = x.double() @ lin.weight.double().t() + (0 if lin.bias is None else lin.bias.double())
    assert out.shape == (batch, M) and torch.equal(out, again) and torch.equal(out, no_pdl)
    assert torch.equal(out, pulled), "with the register units pulled into L2 first (SSM_GEMV_PREFETCH_OWN=1)"
    for ring, got in rings.items():
        assert torch.equal(out, got), f"ring form SSM_GEMV_RING={ring}"
    assert_close(out, ref, dtype, "out")


@pytest.mark.cuda
def test_small_linear_under_autograd_keeps_the_graph(monkeypatch):
    """The kernel has no backward: with autograd on, small_linear is the layer's own call."""
    monkeypatch.setattr(ng, "PLAIN", True)
    lin = nn.Linear(64, 24, device="cuda")
    x = torch.randn(2, 64, device="cuda", requires_grad=True)
    ng.small_linear(lin, x).square().sum().backward()
    assert x.grad is not None and lin.weight.grad is not None


def test_switches_fall_back_to_the_separate_ops(monkeypatch):
    monkeypatch.setattr(css, "FUSED", False)
    inp = make(1, 64, 24, None, torch.float32, torch.device("cpu"))
    assert not ng._fusable(inp["x"], inp["z"], inp["W"], 1)
    assert_close(run(inp, False), ref_out(inp, False), torch.float32, "out")
    lin = nn.Linear(64, 24)
    monkeypatch.setattr(ng, "PLAIN", False)
    with torch.no_grad():
        assert torch.equal(ng.small_linear(lin, inp["x"]), lin(inp["x"]))


@pytest.mark.parametrize("bad, error, words", [
    (dict(x=torch.randn(2, 63)), ValueError, ["weight", "(*, 63)"]),
    (dict(z=torch.randn(2, 60)), ValueError, ["z", "(2, 64)"]),
    (dict(nw=torch.randn(63)), ValueError, ["norm_weight", "(64)"]),
    (dict(b=torch.randn(5)), ValueError, ["bias", "(24)"]),
    (dict(gs=48), ValueError, ["group_size", "48"]),
    (dict(x=torch.randint(0, 3, (2, 64))), TypeError, ["x", "dtype"]),
])
def test_bad_input_is_named(bad, error, words):
    inp = make(2, 64, 24, None, torch.float32, torch.device("cpu"))
    inp.update(bad)
    with pytest.raises(error) as info:
        run(inp, False)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def make_prenorm(batch, K, M, dtype, device, with_residual, is_rms):
    return dict(x=rand(batch, K, dtype=dtype, device=device),
                res=rand(batch, K, device=device) if with_residual else None,
                nw=1.0 + rand(K, dtype=dtype, device=device, scale=0.1),
                nb=None if is_rms else rand(K, dtype=dtype, device=device, scale=0.1),
                lin=nn.Linear(K, M, bias=not is_rms, device=device, dtype=dtype))


def run_prenorm(inp, is_rms):
    with torch.no_grad():
        return ng.norm_linear(inp["x"], inp["res"], inp["nw"], inp["nb"], inp["lin"], is_rms=is_rms, eps=1e-5)


def ref_prenorm(inp, is_rms):
    x, res, nw, nb = (None if t is None else t.double() for t in (inp["x"], inp["res"], inp["nw"], inp["nb"]))
    y, res_out = reference.fused_layer_norm(x, nw, nb, res, is_rms, 1e-5, True, True)
    lin = inp["lin"]
    return y @ lin.weight.double().t() + (0 if lin.bias is None else lin.bias.double()), res_out


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [(1, 64, 24), (3, 768, 100), (4, 256, 9)])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("is_rms", [True, False])
def test_norm_linear_matches_reference(backend, dtype, case, with_residual, is_rms):
    inp = make_prenorm(*case, dtype, device_of(backend), with_residual, is_rms)
    with use_backend(backend):
        out, res = run_prenorm(inp, is_rms)
    ref, ref_res = ref_prenorm(inp, is_rms)
    assert out.dtype == dtype and out.shape == (case[0], case[2]) and res.dtype == torch.float32
    assert_close(out, ref, dtype, "out")
    assert_close(res, ref_res, torch.float32 if with_residual or dtype == torch.float32 else dtype, "residual")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [(1, 768, 3352), (2, 2048, 300), (4, 64, 5)])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("is_rms", [True, False])
def test_norm_linear_cuda_kernel_equals_separate_ops(dtype, case, with_residual, is_rms):
    inp = make_prenorm(*case, dtype, torch.device("cuda"), with_residual, is_rms)
    assert ng._fusable(inp["x"], None, inp["lin"].weight, 1)
    out, res = run_prenorm(inp, is_rms)
    with torch.no_grad():
        y, res_sep = ng.fused_layer_norm(inp["x"], inp["nw"], inp["nb"], inp["res"], is_rms, 1e-5, True, True)
        out_sep = inp["lin"](y)
    assert torch.equal(res, res_sep), "residual_out"
    assert_close(out, out_sep, dtype, "out", factor=0.25)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [(1, 768, 3072, 1536, 4, 4), (3, 64, 200, 100, 4, 4), (2, 96, 48, 24, 2, 3),
                                  (4, 64, 130, 65, 3, 4)])
@pytest.mark.parametrize("is_rms", [True, False])
@pytest.mark.parametrize("activation", ["silu", None])
def test_norm_linear_conv_equals_separate_ops(backend, dtype, case, is_rms, activation):
    """norm_linear with conv (Mamba-1's in_proj + conv update; one kernel on CUDA): the same outputs, conv
    outputs and conv states as norm_linear then causal_conv1d_update, over three steps."""
    batch, K, M, C, W, S = case
    dev = device_of(backend)
    inp = make_prenorm(batch, K, M, dtype, dev, True, is_rms)
    state = rand(batch, C, S, dtype=dtype, device=dev)
    other = state.clone()
    w, b = rand(C, 1, W, device=dev, dtype=dtype, scale=0.5), rand(C, device=dev, dtype=dtype)
    for t in range(3):
        with use_backend(backend), torch.no_grad():
            out, res, x_conv = ng.norm_linear(inp["x"], inp["res"], inp["nw"], inp["nb"], inp["lin"], is_rms=is_rms,
                                              eps=1e-5, conv=(state, w, b, activation))
            out_sep, res_sep = run_prenorm(inp, is_rms)
            conv_sep = causal_conv1d_update(out_sep[:, :C], other, w, b, activation)
        if backend == "cuda":
            assert ng._conv_epilogue_ok(inp["x"], M, (state, w, b, activation))
        assert torch.equal(out, out_sep) and torch.equal(res, res_sep), f"out at step {t}"
        assert_close(x_conv, conv_sep, dtype, f"x_conv at step {t}", factor=0.1)
        assert torch.equal(state, other), f"conv_state at step {t}"
        inp["x"] = rand(batch, K, dtype=dtype, device=dev)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", [(1, 4096, 300, None), (1, 4096, 77, 512), (2, 1024, 65, 256), (4, 768, 33, 96),
                                  (4, 1536, 40, None), (3, 97 * 8, 50, None)])
def test_vector_and_scalar_prologues_agree(dtype, case, monkeypatch):
    """The 16-byte prologue (contiguous rows up to 2 chunks a thread) and the element-wise one
    (SSM_GEMV_VEC=0; also every input past the chunk limit or misaligned) against the separate ops,
    in every mode: the gated norm before and after the gate, the prenorm RMS and LayerNorm with a
    residual, the plain GEMV; both forms bitwise equal (one summation order for the norm statistics);
    then an input misaligned by one element (element-wise path)."""
    monkeypatch.setattr(ng, "PLAIN", True)
    batch, K, M, gs = case
    dev = torch.device("cuda")
    inp = make(batch, K, M, gs, dtype, dev)
    pre = {r: make_prenorm(batch, K, M, dtype, dev, True, r) for r in (True, False)}  # RMS: no norm bias
    y_sep = {b: rmsnorm_fn(inp["x"], inp["nw"], None, z=inp["z"], eps=1e-5, group_size=gs, norm_before_gate=b)
             for b in (False, True)}
    with torch.no_grad():
        pre_sep = {r: ng.fused_layer_norm(p["x"], p["nw"], p["nb"], p["res"], r, 1e-5, True, True)
                   for r, p in pre.items()}
        outs = {}
        for vec in ("1", "0"):
            monkeypatch.setenv("SSM_GEMV_VEC", vec)
            for before in (False, True):
                out = outs[vec, "gated", before] = run(inp, before)
                assert_close(out, torch.nn.functional.linear(y_sep[before], inp["W"], inp["b"]), dtype,
                             f"gated out (vec {vec}, before {before})", factor=0.25)
            for is_rms in (True, False):
                out, res = run_prenorm(pre[is_rms], is_rms)
                outs[vec, "prenorm", is_rms] = out
                y, res_sep = pre_sep[is_rms]
                assert torch.equal(res, res_sep), f"residual_out (vec {vec}, rms {is_rms})"
                assert_close(out, pre[is_rms]["lin"](y), dtype, f"prenorm out (vec {vec}, rms {is_rms})", factor=0.25)
            lin = pre[False]["lin"]
            out = outs[vec, "plain", None] = ng.small_linear(lin, inp["x"])
            assert_close(out, lin(inp["x"]), dtype, f"plain (vec {vec})", factor=0.25)
        for (vec, mode, flag), out in outs.items():
            if vec == "1":
                assert torch.equal(out, outs["0", mode, flag]), f"{mode} {flag}: vector and element-wise differ"
        # one element off 16-byte alignment: the element-wise prologue whatever the switch
        monkeypatch.delenv("SSM_GEMV_VEC")
        xs = rand(batch, K + 1, dtype=dtype, device=dev)[:, 1:]
        assert_close(ng.small_linear(lin, xs), lin(xs), dtype, "misaligned x", factor=0.25)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [(1, 2048, 4100, 2048), (2, 4096, 1030, 512), (4, 768, 3000, None)])
def test_ring_and_register_forms_agree_in_every_prologue(dtype, case, monkeypatch):
    """The GEMV's ring form (the default for large GEMVs with a norm prologue) bitwise equal to the register form
    (SSM_GEMV_RING=0) with the gated norm before / after the gate, the prenorm RMS and LayerNorm with a residual,
    the conv epilogue; and against the separate ops."""
    monkeypatch.setattr(ng, "PLAIN", True)
    batch, K, M, gs = case
    dev = torch.device("cuda")
    inp = make(batch, K, M, gs, dtype, dev)
    pre = {r: make_prenorm(batch, K, M, dtype, dev, True, r) for r in (True, False)}
    conv_w, conv_b = rand(64, 1, 4, device=dev, dtype=dtype, scale=0.5), rand(64, device=dev, dtype=dtype)
    state0 = rand(batch, 64, 4, dtype=dtype, device=dev)
    outs = {}
    for ring in ("0", "3", "3:1", "2:2"):
        monkeypatch.setenv("SSM_GEMV_RING", ring)
        got = [run(inp, before) for before in (False, True)]
        got += [t for r in (True, False) for t in run_prenorm(pre[r], r)]
        state = state0.clone()
        with torch.no_grad():
            got += list(ng.norm_linear(pre[True]["x"], pre[True]["res"], pre[True]["nw"], None, pre[True]["lin"],
                                       is_rms=True, eps=1e-5, conv=(state, conv_w, conv_b, "silu"))) + [state]
        outs[ring] = got
    for ring, got in outs.items():
        assert all(torch.equal(a, b) for a, b in zip(got, outs["0"])), f"SSM_GEMV_RING={ring} differs from registers"
    y = rmsnorm_fn(inp["x"], inp["nw"], None, z=inp["z"], eps=1e-5, group_size=gs, norm_before_gate=False)
    assert_close(outs["3"][0], torch.nn.functional.linear(y, inp["W"], inp["b"]), dtype, "gated out", factor=0.25)


@pytest.mark.parametrize("device", [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_block_prenorm_decode_equals_separate_norm(device, layer, monkeypatch):
    """A decode step through Block's folded add + norm gives the logits of the unfolded step."""
    from ssm.models.config import MambaConfig
    from ssm.models.lm import MambaLMHeadModel
    from ssm.modules import block
    from ssm.utils.inference import InferenceParams
    cfg = MambaConfig(d_model=64, n_layer=2, vocab_size=97, ssm_cfg={"layer": layer, "d_state": 16}
                      | ({"headdim": 16} if layer == "Mamba2" else {}))
    model = MambaLMHeadModel(cfg, device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32).eval()
    ids = torch.randint(0, 97, (2, 6), device=device)
    logits = []
    for prenorm in (True, False):
        monkeypatch.setattr(block, "PRENORM_DECODE", prenorm)
        params = InferenceParams(max_seqlen=16, max_batch_size=2)
        with torch.inference_mode():
            model(ids[:, :5], inference_params=params)
            params.seqlen_offset = 5
            logits.append(model(ids[:, 5:], inference_params=params).logits.float())
    tol = 2e-2 if device == "cuda" else 1e-5
    torch.testing.assert_close(logits[0], logits[1], rtol=tol, atol=tol)


GEMV_CASES = [  # (batch, K, M): K past / short of whole 16- and 8-wide vectors, M short of 4-row blocks;
    # rows of up to 4 KB go one at a time, longer ones (K 1537 float32, K 2100 in every dtype) in blocks of 4
    (1, 768, 64), (2, 48, 7), (3, 1537, 81), (4, 5, 3), (1, 16, 1), (4, 200, 130), (4, 2100, 9),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", GEMV_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_cpu_gemv_linear_matches_reference(dtype, case, bias, monkeypatch):
    batch, K, M = case
    calls = []
    monkeypatch.setattr(ng, "_cpu_gemv", lambda *a, f=ng._cpu_gemv: calls.append(1) or f(*a))
    x = rand(batch, K, dtype=dtype, noncontig=batch > 1)
    W = rand(M, K, dtype=dtype, scale=K ** -0.5)
    b = rand(M, dtype=dtype) if bias else None
    with use_backend("cpu"), torch.no_grad():
        out = ng.gemv_linear(x, W, b)
    assert calls, "the CPU small-batch kernel did not run"
    ref = x.double() @ W.double().t() + (0 if b is None else b.double())
    assert out.dtype == dtype and out.shape == (batch, M) and out.is_contiguous()
    assert_close(out, ref, dtype, "out")


def test_cpu_gemv_leaves_autograd_and_large_batches_to_torch(monkeypatch):
    monkeypatch.setattr(ng, "_cpu_gemv", lambda *a: pytest.fail("kernel called"))
    W = torch.randn(6, 32, requires_grad=True)
    x = torch.randn(2, 32)
    out = ng.gemv_linear(x, W)  # autograd needed: F.linear
    out.sum().backward()
    assert torch.equal(W.grad, x.sum(0).expand(6, 32))
    with torch.no_grad():
        x5 = torch.randn(ng.CPU_MAX_BATCH + 1, 32)
        assert torch.equal(ng.gemv_linear(x5, W), torch.nn.functional.linear(x5, W))
        with use_backend("reference"):
            assert torch.equal(ng.gemv_linear(x, W), torch.nn.functional.linear(x, W))


def test_lm_head_of_a_decode_step_through_the_kernel(monkeypatch):
    from ssm.models.config import MambaConfig
    from ssm.models.lm import MambaLMHeadModel
    cfg = MambaConfig(d_model=32, n_layer=1, vocab_size=50, ssm_cfg={"layer": "Mamba1"})
    model = MambaLMHeadModel(cfg).eval()
    calls = []
    monkeypatch.setattr(ng, "_cpu_gemv", lambda *a, f=ng._cpu_gemv: calls.append(1) or f(*a))
    hidden = torch.randn(3, 4, 32)[:, -1:]
    with torch.no_grad():
        out = model._logits(hidden)
        assert_close(out, model.lm_head(hidden).double(), torch.float32, "logits")
        assert calls and out.shape == (3, 1, model.lm_head.out_features)
        calls.clear()
        model._logits(torch.randn(1, 5, 32))  # a prefill's rows: torch's GEMM
        assert not calls
