"""batch_decode (a decode batch's conv update: channels-last for Mamba-2, with x_proj for Mamba-1) against the
float64 reference, on CUDA through its kernels (the model shapes at batch 64 and ragged ones, every dtype, bias
and activation on/off, strided inputs, repeated calls and a CUDA graph) and on the CPU through the composition;
bad input; the Mamba-1 / Mamba-2 decode steps past batch 8 with the kernels equal to the composition, and
cg=True generation equal to eager in bf16 at batch 12."""
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
XP_CASES = [(64, 1536, 80, 4), (64, 4096, 160, 4), (5, 64, 3, 2), (13, 512, 256, 3), (7, 8192, 40, 4)]  # (B, D, R, W)


@pytest.fixture(autouse=True)
def kernel_on(monkeypatch):
    """The kernels are off by default until the device has run them (ssm.ops.batch_decode.ENABLED)."""
    monkeypatch.setattr(bd, "ENABLED", True)


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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", XP_CASES)
@pytest.mark.parametrize("bias,act", [(True, "silu"), (False, None)])
def test_conv_xproj_matches_reference(device, dtype, case, bias, act):
    batch, D, R, W = case
    x, state, w, b = conv_inputs(batch, D, W, dtype, device, bias, channels_last=False)
    xproj = rand(R, D, dtype=dtype, device=device, scale=D ** -0.5)
    ref, ref_state = conv_ref(x, state, w, b, act)
    x_conv, x_dbl = bd.conv_xproj(x, state, w, b, act, xproj)
    assert_close(x_conv, ref, dtype, "x_conv")
    assert_close(x_dbl, ref @ to64(xproj)[0].t(), dtype, "x_dbl")
    assert torch.equal(state.double().cpu(), ref_state.to(dtype).double().cpu())


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_takes_the_kernels_at_model_shapes(dtype, monkeypatch):
    calls = []
    launch = bd._launch
    monkeypatch.setattr(bd, "_launch", lambda *a: calls.append(len(a) > 5) or launch(*a))
    x, state, w, b = conv_inputs(64, 1792, 4, dtype, CUDA, True, channels_last=True)
    bd.conv_update_cl(x, state, w, b, "silu")
    for D, R in ((1536, 80), (4096, 160)):
        x, state, w, b = conv_inputs(64, D, 4, dtype, CUDA, True, channels_last=False)
        bd.conv_xproj(x, state, w, b, "silu", rand(R, D, dtype=dtype, device=CUDA))
    assert calls == [False, True, True]
    monkeypatch.setattr(bd, "ENABLED", False)
    bd.conv_xproj(x, state, w, b, "silu", rand(160, 4096, dtype=dtype, device=CUDA))
    assert len(calls) == 3


@pytest.mark.cuda
@pytest.mark.parametrize("xproj", [False, True])
def test_cuda_graph_replays_equal_eager(xproj):
    dtype = torch.bfloat16
    x, state, w, b = conv_inputs(64, 1536, 4, dtype, CUDA, True, channels_last=not xproj)
    W = rand(80, 1536, dtype=dtype, device=CUDA)

    def call():
        return bd.conv_xproj(x, state, w, b, "silu", W) if xproj else (bd.conv_update_cl(x, state, w, b, "silu"),)
    start = state.clone()
    eager = [t.clone() for t in call()]
    after = state.clone()
    call()  # warm-up outside the graph
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = call()
    state.copy_(start)
    graph.replay()
    for a, e in zip(outs, eager):
        assert torch.equal(a, e)  # deterministic: partials summed in a fixed order
    assert torch.equal(state, after)


def test_bad_input_names_argument():
    x, state, w, b = conv_inputs(6, 64, 4, torch.float32, torch.device("cpu"), True, channels_last=False)
    with pytest.raises(ValueError, match="conv_state"):
        bd.conv_update_cl(x, state[:, :32], w, b, "silu")
    with pytest.raises(ValueError, match="weight"):
        bd.conv_xproj(x, state, w[:32], b, "silu", rand(8, 64))
    with pytest.raises(ValueError, match="xproj_weight"):
        bd.conv_xproj(x, state, w, b, "silu", rand(8, 63))
    with pytest.raises(ValueError, match="activation"):
        bd.conv_update_cl(x, state, w, b, "relu")


SIZES = {"mamba1": dict(d_model=128, ssm_cfg={"d_state": 16}), "mamba2": dict(d_model=128)}


@pytest.mark.cuda
@needs_lm
@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_cuda_decode_step_kernels_equal_composition(kind, monkeypatch):
    model = real_lm(kind, **SIZES[kind]).to(CUDA, torch.bfloat16)
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
    assert len(calls) == len(model.backbone.layers)  # one kernel a layer
    monkeypatch.setattr(bd, "ENABLED", False)
    assert_close(fast, step_logits().double(), torch.bfloat16, "logits")


@pytest.mark.cuda
@needs_lm
@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_cuda_graph_decode_equals_eager_bf16_batch12(kind):
    torch.manual_seed(0)
    model = real_lm(kind, **SIZES[kind]).to(CUDA, torch.bfloat16)
    ids = torch.randint(0, 61, (12, 5), device=CUDA)
    eager = model.generate(ids, max_length=14, return_dict_in_generate=True, output_scores=True)
    graphed = model.generate(ids, max_length=14, cg=True, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(graphed.sequences, eager.sequences)
    for a, b in zip(graphed.scores, eager.scores):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)
