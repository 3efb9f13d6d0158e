"""batch_decode (a decode batch's conv update on Mamba-2's channels-last cache) against the float64 reference,
on CUDA through its kernel (the model shapes at batch 64 and ragged ones, every dtype, bias and activation
on/off, strided inputs, a CUDA graph) and on the CPU through causal_conv1d_update; bad input; the Mamba-2
decode step at batch 64 with the kernel equal to the general conv update, and cg=True generation equal to
eager in bf16 at batch 12; the Mamba-1 batch step (lt_linear, narrow_linear) against its plain form."""
import pytest
import torch

from ssm.ops import batch_decode as bd
from ssm.ops.python import reference
from ssm.utils.inference import InferenceParams
from tests.ops.harness import DTYPES, assert_close, rand, to64
from tests.utils.models import needs_lm, real_lm

CUDA = torch.device("cuda")
DEVICES = [pytest.param(torch.device("cpu"), id="cpu"), pytest.param(CUDA, id="cuda", marks=pytest.mark.cuda)]
CL_CASES = [(64, 1792, 4), (64, 4352, 4), (5, 130, 3), (9, 33, 2)]  # (batch, D, W): mamba2-130m / 1.3b, ragged


def conv_inputs(batch, D, W, dtype, device, bias, channels_last):
    x = rand(batch, 2 * D + 8, dtype=dtype, device=device)[:, 8:8 + D]  # a strided slice, as of in_proj's output
    if channels_last:
        state = rand(batch, 4, D, dtype=dtype, device=device).transpose(1, 2)
    else:
        state = rand(batch, D, 4, dtype=dtype, device=device)
    w = rand(D, 1, W, dtype=dtype, device=device, scale=0.5)
    b = rand(D, dtype=dtype, device=device) if bias else None
    return x, state, w, b


def conv_ref(x, state, w, b, act):
    s64 = to64(state)[0].clone()
    x64, w64, b64 = to64(x, w, b)
    out = reference.dw_causal_conv_update(x64, s64, w64[:, 0], b64, act)
    return out, s64


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CL_CASES)
@pytest.mark.parametrize("bias,act", [(True, "silu"), (False, None)])
def test_conv_update_cl_matches_reference(device, dtype, case, bias, act):
    x, state, w, b = conv_inputs(*case, dtype, device, bias, channels_last=True)
    ref, ref_state = conv_ref(x, state, w, b, act)
    out = bd.conv_update_cl(x, state, w, b, act)
    assert_close(out, ref, dtype)
    assert torch.equal(state.double().cpu(), ref_state.to(dtype).double().cpu())  # the window shifted exactly


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_takes_the_kernel_at_model_shapes(dtype, monkeypatch):
    calls = []
    launch = bd._launch
    monkeypatch.setattr(bd, "_launch", lambda *a: calls.append(a[0].shape) or launch(*a))
    for D in (1792, 4352):
        bd.conv_update_cl(*conv_inputs(64, D, 4, dtype, CUDA, True, channels_last=True), "silu")
    assert calls == [(64, 1792), (64, 4352)]
    bd.conv_update_cl(*conv_inputs(64, 1792, 4, dtype, CUDA, True, channels_last=False), "silu")  # not channels-last
    assert len(calls) == 2


@pytest.mark.cuda
def test_cuda_graph_replays_equal_eager():
    dtype = torch.bfloat16
    x, state, w, b = conv_inputs(64, 1792, 4, dtype, CUDA, True, channels_last=True)
    start = state.clone()
    eager = bd.conv_update_cl(x, state, w, b, "silu").clone()
    after = state.clone()
    bd.conv_update_cl(x, state, w, b, "silu")  # warm-up outside the graph
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = bd.conv_update_cl(x, state, w, b, "silu")
    state.copy_(start)
    graph.replay()
    assert torch.equal(out, eager) and torch.equal(state, after)


def test_bad_input_names_argument():
    x, state, w, b = conv_inputs(6, 64, 4, torch.float32, torch.device("cpu"), True, channels_last=True)
    with pytest.raises(ValueError, match="conv_state"):
        bd.conv_update_cl(x, state[:, :32], w, b, "silu")
    with pytest.raises(ValueError, match="weight"):
        bd.conv_update_cl(x, state, w[:32], b, "silu")
    with pytest.raises(ValueError, match="bias"):
        bd.conv_update_cl(x, state, w, b[:32], "silu")
    with pytest.raises(ValueError, match="activation"):
        bd.conv_update_cl(x, state, w, b, "relu")


@pytest.mark.cuda
@needs_lm
def test_cuda_decode_step_kernel_equals_general_conv_update(monkeypatch):
    model = real_lm("mamba2", d_model=128).to(CUDA, torch.bfloat16)
    batch = 64
    ids = torch.randint(0, 61, (batch, 6), device=CUDA)
    calls = []
    launch = bd._launch
    monkeypatch.setattr(bd, "_launch", lambda *a: calls.append(1) or launch(*a))

    def step_logits():  # a prefill, then one decode step of a given token
        params = InferenceParams(max_seqlen=16, max_batch_size=batch)
        with torch.no_grad():
            model(ids, inference_params=params, num_last_tokens=1)
            params.seqlen_offset += ids.shape[1]
            return model(ids[:, -1:], inference_params=params, num_last_tokens=1).logits

    fast = step_logits()
    assert len(calls) == len(model.backbone.layers)  # one call a layer
    monkeypatch.setattr(bd, "_kernel_ok", lambda *a: False)  # the general conv update kernel
    assert_close(fast, step_logits().double(), torch.bfloat16, "logits")


@pytest.mark.cuda
@needs_lm
def test_cuda_graph_decode_equals_eager_bf16_batch12():
    torch.manual_seed(0)
    model = real_lm("mamba2", d_model=128).to(CUDA, torch.bfloat16)
    ids = torch.randint(0, 61, (12, 5), device=CUDA)
    eager = model.generate(ids, max_length=14, return_dict_in_generate=True, output_scores=True)
    graphed = model.generate(ids, max_length=14, cg=True, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(graphed.sequences, eager.sequences)
    for a, b in zip(graphed.scores, eager.scores):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_lt_linear_equals_linear_and_restores_the_library(device):
    before = torch.backends.cuda.preferred_blas_library()
    x = rand(64, 4096, dtype=torch.bfloat16, device=device)
    w = rand(2048, 4096, dtype=torch.bfloat16, device=device, scale=4096 ** -0.5)
    b = rand(2048, dtype=torch.bfloat16, device=device)
    out = bd.lt_linear(x, w, b)
    assert torch.backends.cuda.preferred_blas_library() == before
    x64, w64, b64 = to64(x, w, b)
    assert_close(out, x64 @ w64.t() + b64, torch.bfloat16)


@pytest.mark.cuda
@needs_lm
def test_cuda_mamba1_batch_step_equals_default_and_graph(monkeypatch):
    torch.manual_seed(0)
    model = real_lm("mamba1", d_model=128, ssm_cfg={"d_state": 16}).to(CUDA, torch.bfloat16)
    ids = torch.randint(0, 61, (12, 5), device=CUDA)
    calls = []
    lt, narrow = bd.lt_linear, bd._narrow_ok
    monkeypatch.setattr(bd, "lt_linear", lambda *a: calls.append("lt") or lt(*a))
    monkeypatch.setattr(bd, "_narrow_ok", lambda *a: calls.append(narrow(*a)) or calls[-1])
    eager = model.generate(ids, max_length=14, return_dict_in_generate=True, output_scores=True)
    assert "lt" in calls and True in calls and False not in calls  # out_proj, x_proj's narrow kernel past batch 4
    graphed = model.generate(ids, max_length=14, cg=True, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(graphed.sequences, eager.sequences)
    for a, b in zip(graphed.scores, eager.scores):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)
    monkeypatch.setattr(bd, "lt_linear", lambda x, w, b=None: torch.nn.functional.linear(x, w, b))  # cuBLAS' pick
    monkeypatch.setattr(bd, "_narrow_ok", lambda *a: False)  # on F.linear
    plain = model.generate(ids, max_length=14, return_dict_in_generate=True, output_scores=True)
    assert_close(plain.scores[1], eager.scores[1].double(), torch.bfloat16, "first decoded step's scores")


NARROW_CASES = [(64, 1536, 80), (64, 2048, 128), (5, 8, 1), (13, 520, 256), (70, 64, 33)]  # (B, K, R)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", NARROW_CASES)
def test_narrow_linear_matches_reference(device, dtype, case, monkeypatch):
    batch, K, R = case
    x = rand(batch, K + 8, dtype=dtype, device=device)[:, 8:]  # a strided view with 16-byte aligned rows
    w = rand(R, K, dtype=dtype, device=device, scale=K ** -0.5)
    calls = []
    monkeypatch.setattr(bd, "_narrow_ok", lambda *a, f=bd._narrow_ok: calls.append(f(*a)) or calls[-1])
    out = bd.narrow_linear(x, w)
    # the kernel on CUDA for weights up to its byte limit (float32's 2048 x 128 and 520 x 256 are past it)
    assert calls == [device.type == "cuda" and w.numel() * w.element_size() <= bd._NARROW_MAX_BYTES]
    x64, w64 = to64(x, w)
    assert_close(out, x64 @ w64.t(), dtype)
    if device.type == "cuda":
        assert torch.equal(out, bd.narrow_linear(x, w))  # deterministic


@pytest.mark.cuda
def test_narrow_linear_leaves_large_weights_to_cublas(monkeypatch):
    calls = []
    monkeypatch.setattr(bd, "_narrow_ok", lambda *a, f=bd._narrow_ok: calls.append(f(*a)) or calls[-1])
    x = rand(64, 4096, dtype=torch.bfloat16, device=CUDA)
    w = rand(160, 4096, dtype=torch.bfloat16, device=CUDA, scale=4096 ** -0.5)
    torch.testing.assert_close(bd.narrow_linear(x, w), torch.nn.functional.linear(x, w))
    assert calls == [False]


def test_narrow_linear_bad_input_names_argument():
    with pytest.raises(ValueError, match="weight"):
        bd.narrow_linear(rand(6, 64), rand(8, 63))
    with pytest.raises(ValueError, match="x"):
        bd.narrow_linear(rand(6, 64, 2), rand(8, 64))
