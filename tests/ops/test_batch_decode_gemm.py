"""batch_decode.linear_conv (a decode batch's projection with the conv update of some output columns, Mamba-1's
in_proj + conv update) and norm_linear_conv (with the prenorm residual add + norm folded in) against the float64
reference: on CUDA through its tensor-core kernel (the model shapes at
batch 64, ragged ones, batch > 64, both conv cache layouts, bias and activation on/off, a CUDA graph, repeated
calls bitwise equal) and on the CPU through F.linear + causal_conv1d_update; bad input; the Mamba-1 decode step
past batch 4 and the Mamba-2 one past batch 8 with the kernel against SSM_BATCH_GEMM=0, cg=True equal to eager."""
import pytest
import torch

from ssm.ops import batch_decode as bd
from ssm.ops.python import reference
from tests.ops.harness import DTYPES, assert_close, rand, to64
from tests.utils.models import needs_lm, real_lm

CUDA = torch.device("cuda")
DEVICES = [pytest.param(torch.device("cpu"), id="cpu"), pytest.param(CUDA, id="cuda", marks=pytest.mark.cuda)]
# (batch, K, N, conv_lo, C): mamba-130m's in_proj, a mamba2-130m-like split, ragged ones, batch past 64, the largest K
# and K past 1152 in chunks of 256 (a ring of 3: 8 and 5 chunks)
CASES = [(64, 768, 3072, 0, 1536), (64, 768, 3352, 1536, 1792), (5, 48, 40, 8, 16), (70, 1152, 72, 24, 48),
         (13, 256, 264, 0, 0), (64, 2048, 2048, 512, 1024), (7, 1280, 264, 8, 256)]


@pytest.fixture(autouse=True)
def kernel_on(monkeypatch):
    """The kernel (and its norm prologue) on whatever SSM_BATCH_GEMM / SSM_BATCH_GEMM_NORM say."""
    monkeypatch.setattr(bd, "GEMM", True)
    monkeypatch.setattr(bd, "NORM", True)


def gemm_inputs(batch, K, N, C, dtype, device, bias=True, channels_last=False):
    x = rand(batch, K + 8, dtype=dtype, device=device)[:, 8:]  # a strided view with 16-byte aligned rows
    w = rand(N, K, dtype=dtype, device=device, scale=K ** -0.5)
    if C == 0:
        return x, w, None
    if channels_last:
        state = rand(batch, 4, C, dtype=dtype, device=device).transpose(1, 2)
    else:
        state = rand(batch, C, 4, dtype=dtype, device=device)
    cw = rand(C, 1, 4, dtype=dtype, device=device, scale=0.5)
    cb = rand(C, dtype=dtype, device=device) if bias else None
    return x, w, (state, cw, cb, "silu" if bias else None)


def counted(monkeypatch):
    calls = []
    monkeypatch.setattr(bd, "_gemm_ok", lambda *a, f=bd._gemm_ok: calls.append(f(*a)) or calls[-1])
    return calls


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias,channels_last", [(True, False), (False, True)])
def test_linear_conv_matches_reference(device, dtype, case, bias, channels_last, monkeypatch):
    batch, K, N, lo, C = case
    x, w, conv = gemm_inputs(batch, K, N, C, dtype, device, bias, channels_last)
    start = None if conv is None else conv[0].clone()
    calls = counted(monkeypatch)
    res = bd.linear_conv(x, w, None, conv, lo)
    assert calls == [device.type == "cuda" and dtype != torch.float32]  # the kernel for every 16-bit case
    x64, w64 = to64(x, w)
    ref = x64 @ w64.t()
    if conv is None:
        assert_close(res, ref, dtype)
        return
    out, x_conv = res
    assert_close(out, ref, dtype)
    state, cw, cb, act = conv
    s64 = start.double()
    ref_conv = reference.dw_causal_conv_update(ref.to(dtype).double()[:, lo:lo + C], s64, cw.double()[:, 0],
                                               None if cb is None else cb.double(), act)
    assert_close(x_conv, ref_conv, dtype, "x_conv")
    shifted = torch.cat([start[..., 1:], out[:, lo:lo + C, None]], dim=-1)  # the window shifted, x as rounded
    assert torch.equal(state, shifted)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("K,N,C", [(768, 3072, 1536), (2048, 8192, 4096)])  # mamba-130m's and mamba-1.4b's in_proj
def test_linear_conv_repeats_bitwise_and_in_a_graph(dtype, K, N, C):
    x, w, conv = gemm_inputs(64, K, N, C, dtype, CUDA)
    state = conv[0]
    start = state.clone()
    out, x_conv = (t.clone() for t in bd.linear_conv(x, w, None, conv))
    after = state.clone()
    state.copy_(start)
    again = bd.linear_conv(x, w, None, conv)
    assert torch.equal(again[0], out) and torch.equal(again[1], x_conv) and torch.equal(state, after)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out, g_conv = bd.linear_conv(x, w, None, conv)
    state.copy_(start)
    graph.replay()
    assert torch.equal(g_out, out) and torch.equal(g_conv, x_conv) and torch.equal(state, after)


@pytest.mark.cuda
def test_linear_conv_falls_back_outside_the_kernel(monkeypatch):
    calls = counted(monkeypatch)
    x, w, conv = gemm_inputs(64, 1168, 512, 256, torch.bfloat16, CUDA)  # K past 1152, not a multiple of 256
    out, _ = bd.linear_conv(x, w, None, conv)
    torch.testing.assert_close(out, torch.nn.functional.linear(x, w))
    b = rand(512, dtype=torch.bfloat16, device=CUDA)
    x, w, _ = gemm_inputs(64, 768, 512, 0, torch.bfloat16, CUDA)
    torch.testing.assert_close(bd.linear_conv(x, w, b), torch.nn.functional.linear(x, w, b))  # a bias
    sms = torch.cuda.get_device_properties(CUDA).multi_processor_count
    x, w, _ = gemm_inputs(64, 256, 32 * (sms + 1), 0, torch.bfloat16, CUDA)  # a second wave of one block
    torch.testing.assert_close(bd.linear_conv(x, w), torch.nn.functional.linear(x, w))
    assert calls == [False, False, False]


NORM_CASES = [(64, 768, 3072, 0, 1536), (64, 768, 3352, 1536, 1792), (70, 1152, 72, 24, 48), (5, 48, 40, 8, 16),
              (64, 2048, 2048, 512, 1024)]  # the last past 1152: the norm kernel, then linear_conv's kernel


def norm_ref(x, residual, nw, nb, is_rms, eps=1e-5):
    v = x.double() + (0 if residual is None else residual.double())
    mean = 0 if is_rms else v.mean(-1, keepdim=True)
    y = (v - mean) * torch.rsqrt(((v - mean) ** 2).mean(-1, keepdim=True) + eps) * nw.double()
    return y if nb is None else y + nb.double()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", NORM_CASES)
@pytest.mark.parametrize("is_rms,with_residual", [(True, True), (False, True), (True, False)])
def test_norm_linear_conv_matches_reference(device, dtype, case, is_rms, with_residual, monkeypatch):
    batch, K, N, lo, C = case
    x, w, conv = gemm_inputs(batch, K, N, C, dtype, device, bias=is_rms, channels_last=not is_rms)
    residual = rand(batch, K, device=device) if with_residual else None
    nw = rand(K, device=device, scale=0.5) + 1
    nb = None if is_rms else rand(K, device=device, scale=0.1)
    start = conv[0].clone()
    calls = []
    monkeypatch.setattr(bd, "_gemm_launch",  # records whether the launch folds the norm
                        lambda *a, f=bd._gemm_launch: calls.append(len(a) > 4 and a[4] is not None) or f(*a))
    out, res, x_conv = bd.norm_linear_conv(x, residual, nw, nb, w, None, conv, lo, is_rms=is_rms)
    fused = device.type == "cuda" and dtype != torch.float32
    assert calls == ([K <= 1152] if fused else [])  # one kernel with the norm where it takes the whole K, else two
    assert res.dtype == torch.float32 and torch.equal(res, x.float() + (0 if residual is None else residual))
    ref = norm_ref(x, residual, nw, nb, is_rms) @ w.double().t()
    assert_close(out, ref, dtype)
    state, cw, cb, act = conv
    ref_conv = reference.dw_causal_conv_update(out.double()[:, lo:lo + C], start.double(), cw.double()[:, 0],
                                               None if cb is None else cb.double(), act)
    assert_close(x_conv, ref_conv, dtype, "x_conv")
    assert torch.equal(state, torch.cat([start[..., 1:], out[:, lo:lo + C, None]], dim=-1))


@pytest.mark.cuda
def test_norm_linear_conv_off_equals_the_norm_kernel_then_linear_conv(monkeypatch):
    x, w, conv = gemm_inputs(64, 768, 3072, 1536, torch.bfloat16, CUDA)
    residual, nw = rand(64, 768, device=CUDA), rand(768, device=CUDA) + 1
    start = conv[0].clone()
    fused = [t.clone() for t in bd.norm_linear_conv(x, residual, nw, None, w, None, conv)]
    conv[0].copy_(start)
    monkeypatch.setattr(bd, "NORM", False)
    plain = bd.norm_linear_conv(x, residual, nw, None, w, None, conv)
    assert torch.equal(fused[1], plain[1])  # residual_out
    for a, b, name in ((fused[0], plain[0], "out"), (fused[2], plain[2], "x_conv")):
        assert_close(a, b.double(), torch.bfloat16, name, factor=0.25)  # only the norm's float32 sum order differs


def test_linear_conv_bad_input_names_argument():
    x, w, conv = gemm_inputs(6, 64, 48, 16, torch.float32, torch.device("cpu"))
    state, cw, cb, act = conv
    with pytest.raises(ValueError, match="weight"):
        bd.linear_conv(x, w[:, :32], None, conv)
    with pytest.raises(ValueError, match="bias"):
        bd.linear_conv(x, w, w[0, :8], conv)
    with pytest.raises(ValueError, match="conv_state"):
        bd.linear_conv(x, w, None, (state[:3], cw, cb, act))
    with pytest.raises(ValueError, match="conv_lo"):
        bd.linear_conv(x, w, None, conv, 40)
    with pytest.raises(ValueError, match="conv_weight"):
        bd.linear_conv(x, w, None, (state, cw[:8], cb, act))
    with pytest.raises(ValueError, match="conv_bias"):
        bd.linear_conv(x, w, None, (state, cw, cb[:8], act))
    with pytest.raises(ValueError, match="activation"):
        bd.linear_conv(x, w, None, (state, cw, cb, "relu"))
    nw = rand(64)
    with pytest.raises(ValueError, match="residual"):
        bd.norm_linear_conv(x, x[:3], nw, None, w, None, conv)
    with pytest.raises(ValueError, match="norm_weight"):
        bd.norm_linear_conv(x, None, nw[:32], None, w, None, conv)
    with pytest.raises(ValueError, match="norm_bias"):
        bd.norm_linear_conv(x, None, nw, nw[:32], w, None, conv)


@pytest.mark.cuda
@needs_lm
@pytest.mark.parametrize("kind,cfg", [("mamba1", {"d_state": 16}),
                                      ("mamba2", {"layer": "Mamba2", "d_state": 16, "headdim": 16, "chunk_size": 8})])
def test_cuda_batch_step_with_the_kernel(kind, cfg, monkeypatch):
    torch.manual_seed(0)
    model = real_lm(kind, d_model=128, ssm_cfg=cfg).to(CUDA, torch.bfloat16)  # in_proj 128 -> 512 / 560
    ids = torch.randint(0, 61, (12, 5), device=CUDA)
    calls = counted(monkeypatch)
    eager = model.generate(ids, max_length=14, return_dict_in_generate=True, output_scores=True)
    assert calls and all(calls)  # in_proj + conv update on the kernel at every decoded step and layer
    graphed = model.generate(ids, max_length=14, cg=True, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(graphed.sequences, eager.sequences)
    for a, b in zip(graphed.scores, eager.scores):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)
    monkeypatch.setattr(bd, "NORM", False)  # the norm kernel, then linear_conv's kernel
    unfused = model.generate(ids, max_length=14, return_dict_in_generate=True, output_scores=True)
    assert_close(unfused.scores[1], eager.scores[1].double(), torch.bfloat16, "first decoded step's scores")
    monkeypatch.setattr(bd, "GEMM", False)
    plain = model.generate(ids, max_length=14, return_dict_in_generate=True, output_scores=True)
    assert_close(plain.scores[1], eager.scores[1].double(), torch.bfloat16, "first decoded step's scores")
