"""dw_causal_conv on channels-last x (stride 1 along D: a slice of a (B, L, T) buffer, like the
fused Mamba-2 path's xBC) on every backend against the float64 reference: forward, gradients,
the output layout, the CUDA kernels' word-aligned and odd-offset paths, determinism."""
import pytest
import torch

import ssm.ops as ops
from ssm.ops import conv
from ssm.ops.python import reference
from tests.ops.harness import DTYPES, assert_close, backends, device_of, rand, to64, use_backend

SHAPES = [  # (B, D, L, W): L = 1, odd sizes, several channel blocks and L tiles, W 5 (general kernel)
    (1, 1, 1, 4),
    (2, 5, 7, 4),
    (2, 8, 33, 3),
    (1, 3, 64, 2),
    (2, 300, 150, 4),
    (3, 7, 19, 5),
]
OPTIONS = ["plain", "bias+silu", "seq_idx", "init+final", "all", "odd_offset"]


@pytest.fixture(autouse=True)
def channels_last_everywhere(monkeypatch):
    """Outputs channels-last on the CPU too (CUDA only by default): the CPU kernels take strides."""
    monkeypatch.setattr(conv, "CHANNELS_LAST_DEVICES", ("cuda", "cpu"))


def channels_last(B, D, L, dtype, device, offset):
    """x (B, D, L) as the channels [offset, offset + D) of a (B, L, T) buffer."""
    T = (offset + D + 15) // 8 * 8 + 8
    return rand(B, L, T, dtype=dtype, device=device)[..., offset:offset + D].transpose(1, 2)


def make_inputs(shape, dtype, device, options):
    B, D, L, W = shape
    on = {name: options in (name, "all", "odd_offset") for name in ("bias+silu", "seq_idx", "init+final")}
    x = channels_last(B, D, L, dtype, device, 3 if options == "odd_offset" else 8)
    w = rand(D, W, device=device, scale=0.5)
    b = rand(D, device=device) if on["bias+silu"] else None
    seq_idx = None
    if on["seq_idx"]:
        seq_idx = torch.sort(torch.randint(0, 3, (B, L), device=device), dim=1).values.to(torch.int32)
    init = rand(B, D, W - 1, dtype=dtype, device=device) if on["init+final"] else None
    activation = None if options in ("plain", "init+final") else "silu"
    final = options in ("init+final", "all", "seq_idx", "odd_offset")
    return x, w, b, seq_idx, init, activation, final


def assert_channels_last(t, name):
    B, D, L = t.shape
    assert t.stride() == (L * D, 1, D), f"{name}: strides {t.stride()} are not channels-last"


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("options", OPTIONS)
def test_forward_matches_reference(backend, dtype, shape, options):
    x, w, b, seq_idx, init, activation, final = make_inputs(shape, dtype, device_of(backend), options)
    with use_backend(backend):
        out = conv._fwd_op(x, w, b, seq_idx, init, activation is not None, final)
    x64, w64, b64, init64 = to64(x, w, b, init)
    ref = reference.dw_causal_conv(x64, w64, b64, activation, seq_idx=seq_idx, initial_states=init64,
                                   return_final_states=final)
    ref = ref if final else (ref,)
    assert out[0].dtype == dtype
    assert_channels_last(out[0], "y")
    assert_close(out[0], ref[0], dtype, "y")
    if final:
        assert_close(out[1], ref[1], dtype, "final_states")


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("options", OPTIONS)
def test_gradients_match_reference(backend, dtype, shape, options):
    x, w, b, seq_idx, init, activation, final = make_inputs(shape, dtype, device_of(backend), options)
    silu = activation is not None
    dy = channels_last(*x.shape, dtype, x.device, 0)
    dfinal = rand(x.shape[0], x.shape[1], w.shape[1] - 1, dtype=dtype, device=x.device) if final else x.new_empty(0)
    with use_backend(backend):
        grads = conv._bwd_op(x, w, b, seq_idx, init, dy, dfinal, silu, final)
    assert_channels_last(grads[0], "dx")
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b, init)]
    ref = reference.dw_causal_conv(*leaves[:3], activation, seq_idx=seq_idx, initial_states=leaves[3],
                                   return_final_states=final)
    outs, douts = (ref, (dy, dfinal)) if final else ((ref,), (dy,))
    torch.autograd.backward(outs, [d.double() for d in douts])
    for name, got, leaf in zip(("dx", "dweight", "dbias", "dinitial_states"), grads, leaves):
        if leaf is not None:
            assert_close(got, leaf.grad, dtype, name, factor=2.0)


@pytest.mark.parametrize("backend", backends())
def test_long_sequence_through_autograd(backend):
    """L >= 4096 (many L tiles), the public op under autograd on a slice of a (B, L, T) leaf."""
    dev = device_of(backend)
    buf = rand(2, 4099, 56, dtype=torch.bfloat16, device=dev).requires_grad_()
    w, b = rand(40, 4, device=dev, scale=0.5).requires_grad_(), rand(40, device=dev).requires_grad_()
    with use_backend(backend):
        y = ops.dw_causal_conv(buf[..., 8:48].transpose(1, 2), w, b, "silu")
        dy = torch.randn_like(y)
        y.backward(dy)
    leaves = [t.detach().double().requires_grad_() for t in (buf, w, b)]
    ref = reference.dw_causal_conv(leaves[0][..., 8:48].transpose(1, 2), *leaves[1:], "silu")
    ref.backward(dy.double())
    assert_close(y, ref.detach(), torch.bfloat16, "y")
    for name, got, want in zip(("dx", "dweight", "dbias"), (buf, w, b), leaves):
        assert_close(got.grad, want.grad, torch.bfloat16, name, factor=2.0)
    assert torch.all(buf.grad[..., :8] == 0) and torch.all(buf.grad[..., 48:] == 0)


@pytest.mark.parametrize("backend", backends())
def test_contiguous_layout_switch(backend, monkeypatch):
    """SSM_CONV_CHANNELS_LAST=0 (no conv.CHANNELS_LAST_DEVICES): outputs contiguous, values unchanged."""
    x, w, b, seq_idx, init, activation, final = make_inputs((2, 12, 20, 4), torch.float32, device_of(backend), "all")
    with use_backend(backend):
        y_cl = conv._fwd_op(x, w, b, seq_idx, init, True, final)[0]
        monkeypatch.setattr(conv, "CHANNELS_LAST_DEVICES", ())
        y = conv._fwd_op(x, w, b, seq_idx, init, True, final)[0]
    assert y.is_contiguous() and y_cl.stride(1) == 1
    assert_close(y, y_cl.double(), torch.float32, "y contiguous vs channels-last")


def test_torch_compile_matches_eager():
    def f(buf, w, b):
        return ops.dw_causal_conv(buf[..., 2:14].transpose(1, 2), w, b, "silu") * 2

    compiled = torch.compile(f, fullgraph=True)
    buf, w, b = rand(2, 9, 16).requires_grad_(), rand(12, 4), rand(12)
    y = compiled(buf, w, b)
    want = f(buf, w, b)
    assert_close(y, want.detach().double(), torch.float32, "compiled conv")
    y.sum().backward()
    g = buf.grad.clone()
    buf.grad = None
    want.sum().backward()
    assert_close(g, buf.grad.double(), torch.float32, "compiled dx")


@pytest.mark.cuda
def test_cuda_backward_is_deterministic():
    """dweight / dbias partials are reduced in a fixed order: two runs agree bitwise."""
    x, w, b, seq_idx, init, _, _ = make_inputs((3, 520, 700, 4), torch.bfloat16, "cuda", "all")
    dy = channels_last(3, 520, 700, torch.bfloat16, "cuda", 0)
    runs = [conv._bwd_op(x, w, b, seq_idx, init, dy, x.new_empty(0), True, False) for _ in range(2)]
    for got, again in zip(*runs):
        assert torch.equal(got, again)
