"""conv_state_step (the fused Mamba-2 decode step: conv update + state step) on every backend
against the float64 reference composition, the CUDA kernel against the composition of the two
separate CUDA ops over several consecutive steps (both block shapes, CUDA-graph replays), bad input."""
import pytest
import torch

from ssm.ops import conv_state_step as css
from ssm.ops.python import reference
from ssm.ops.state_step import selective_state_update_ref
from tests.ops.harness import DTYPES, assert_close, backends, device_of, rand, use_backend

CASES = [  # (batch, H, P, N, G, W, S)
    (1, 3, 8, 16, 1, 4, 4),
    (2, 4, 5, 32, 2, 4, 4),
    (3, 2, 64, 128, 1, 4, 4),
    (2, 6, 16, 64, 3, 3, 5),
    (1, 2, 8, 256, 2, 2, 1),
]
OPTIONS = ["plain", "z+D", "D_hdim", "fp32_state", "no_bias", "all"]


def make(batch, H, P, N, G, W, S, dtype, device, opts, noncontig=False):
    full = "all" in opts
    conv_dim = H * P + 2 * G * N
    # in_proj-like row: xBC and dt are strided views of one wider row
    row = rand(batch, conv_dim + H + 5, dtype=dtype, device=device)
    xBC, dt = row[:, :conv_dim], row[:, conv_dim + 2:conv_dim + 2 + H]
    dt.mul_(0.5)
    # channels-last conv state (the Mamba-2 cache layout)
    conv_state = rand(batch, S, conv_dim, dtype=dtype, device=device).transpose(1, 2)
    weight = rand(conv_dim, 1, W, dtype=dtype, device=device, scale=0.5)
    bias = None if "no_bias" in opts else rand(conv_dim, dtype=dtype, device=device)
    sdtype = torch.float32 if "fp32_state" in opts or full else dtype
    state = rand(batch, H, P, N, dtype=sdtype, device=device)
    A = -torch.exp(rand(H, device=device, scale=0.5))
    D = None
    if "z+D" in opts or full:
        D = rand(H, device=device)
    if "D_hdim" in opts:
        D = rand(H, P, device=device)
    z = rand(batch, H, P, dtype=dtype, device=device, noncontig=noncontig) if "z+D" in opts or full else None
    dt_bias = rand(H, dtype=dtype, device=device, scale=0.3) - 1.0
    return dict(xBC=xBC, conv_state=conv_state, conv_weight=weight, conv_bias=bias, ssm_state=state, dt=dt, A=A,
                D=D, dt_bias=dt_bias, z=z, G=G)


def run(fn, inp, **kw):
    return fn(inp["xBC"], inp["conv_state"], inp["conv_weight"], inp["conv_bias"], inp["ssm_state"], inp["dt"],
              inp["A"], inp["D"], inp["dt_bias"], inp["z"], ngroups=inp["G"], **kw)


def reference_step(xBC, conv_state, conv_weight, conv_bias, ssm_state, dt, A, D, dt_bias, z, ngroups):
    """float64 composition of the reference conv update and state step."""
    batch, H, P, N = ssm_state.shape
    xc = reference.dw_causal_conv_update(xBC, conv_state, conv_weight.squeeze(1), conv_bias, "silu")
    x, B, C = torch.split(xc, [H * P, ngroups * N, ngroups * N], dim=-1)
    return selective_state_update_ref(ssm_state, x.view(batch, H, P), dt, A, B.view(batch, ngroups, N),
                                      C.view(batch, ngroups, N), D, z, dt_bias, True)


def as64(inp):
    return {k: (v.detach().double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for k, v in inp.items()}


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("option", OPTIONS)
def test_matches_reference(backend, dtype, case, option):
    inp = make(*case, dtype, device_of(backend), {option}, noncontig=True)
    ref = as64(inp)
    with use_backend(backend):
        y = run(css.conv_state_step, inp)
    y_ref = run(reference_step, ref)
    assert y.dtype == dtype and y.shape == case[:3]
    assert_close(y, y_ref, dtype, "y")
    # the conv outputs (x, B, C) are rounded to the activations' dtype, whatever the state's
    assert_close(inp["ssm_state"], ref["ssm_state"], dtype, "ssm_state")
    assert torch.equal(inp["conv_state"].double(), ref["conv_state"]), "conv_state"


def _composed(inp):
    return css._composed(inp["xBC"], inp["conv_state"], inp["conv_weight"], inp["conv_bias"], inp["ssm_state"],
                         inp["dt"], inp["A"], inp["D"], inp["dt_bias"], inp["z"], inp["G"], "silu", True)


def _clone(inp):
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}


@pytest.mark.cuda
@pytest.mark.parametrize("settled", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES + [(64, 24, 64, 128, 1, 4, 4), (1, 24, 64, 128, 1, 4, 4)])
def test_cuda_kernel_equals_separate_ops(settled, dtype, case, monkeypatch):
    """Several consecutive steps: the B/C conv states are rewritten once per step by the last
    block (a counter left non-zero would freeze them from the second step on). states_settled:
    the states read before the previous kernel (here a copy of the next inputs) ends."""
    monkeypatch.setattr(css, "MAX_BATCH", 65535)  # the kernel, whatever batch the modules hand it
    inp = make(*case, dtype, torch.device("cuda"), {"all"})
    other = _clone(inp)
    assert css._fusable(inp["xBC"], inp["conv_state"], inp["conv_weight"], inp["ssm_state"], inp["dt"], inp["z"])
    for t in range(4):
        y = run(css.conv_state_step, inp, states_settled=settled)
        y_sep = _composed(other)
        assert_close(y, y_sep, dtype, f"y at step {t}", factor=0.1)
        assert torch.equal(inp["conv_state"], other["conv_state"]), f"conv_state at step {t}"
        assert_close(inp["ssm_state"], other["ssm_state"], torch.float32, f"ssm_state at step {t}", factor=10)
        for k in ("xBC", "dt", "z"):  # new inputs for the next step, the same on both sides
            inp[k].copy_(rand(*inp[k].shape, dtype=dtype, device="cuda"))
            other[k].copy_(inp[k])


@pytest.mark.cuda
def test_cuda_graph_replays_equal_eager():
    dtype = torch.bfloat16
    inp = make(2, 8, 64, 128, 2, 4, 4, dtype, torch.device("cuda"), {"z+D"})
    other = _clone(inp)
    run(css.conv_state_step, _clone(inp))  # warm-up: float32 copies of the parameters, counters
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = run(css.conv_state_step, inp, states_settled=True)
    for t in range(3):
        graph.replay()
        y_sep = _composed(other)
        assert_close(y, y_sep, dtype, f"y at replay {t}", factor=0.1)
        assert torch.equal(inp["conv_state"], other["conv_state"]), f"conv_state at replay {t}"
        inp["xBC"].copy_(rand(*inp["xBC"].shape, dtype=dtype, device="cuda"))
        other["xBC"].copy_(inp["xBC"])


@pytest.mark.cuda
@pytest.mark.parametrize("settled", [False, True])
def test_cuda_back_to_back_calls_on_other_states(settled):
    """Two layers' steps launched one right after the other (states_settled holds: neither writes the
    other's states), several times over: a launch drawing its tickets before the PDL wait (settled)
    while the one before still zeroes its counter must not meet it; the late form draws after it."""
    dtype = torch.bfloat16
    layers = [make(1, 24, 64, 128, 1, 4, 4, dtype, torch.device("cuda"), {"z+D"}),
              make(1, 4, 64, 64, 2, 4, 4, dtype, torch.device("cuda"), {"all"})]
    others = [_clone(inp) for inp in layers]
    for t in range(4):
        ys = [run(css.conv_state_step, inp, states_settled=settled) for inp in layers]
        for i, (y, other) in enumerate(zip(ys, others)):
            assert_close(y, _composed(other), dtype, f"y of layer {i} at step {t}", factor=0.1)
            assert torch.equal(layers[i]["conv_state"], other["conv_state"]), f"conv_state of layer {i} at step {t}"
            assert_close(layers[i]["ssm_state"], other["ssm_state"], torch.float32, f"ssm_state of layer {i}",
                         factor=10)
        for inp, other in zip(layers, others):
            inp["xBC"].copy_(rand(*inp["xBC"].shape, dtype=dtype, device="cuda"))
            other["xBC"].copy_(inp["xBC"])


def test_falls_back_to_the_separate_ops_when_switched_off(monkeypatch):
    monkeypatch.setattr(css, "FUSED", False)
    inp = make(1, 2, 8, 16, 1, 4, 4, torch.float32, torch.device("cpu"), {"all"})
    assert not css._fusable(inp["xBC"], inp["conv_state"], inp["conv_weight"], inp["ssm_state"], inp["dt"], inp["z"])
    ref = as64(inp)
    y = run(css.conv_state_step, inp)
    assert_close(y, run(reference_step, ref), torch.float32, "y")


@pytest.mark.parametrize("bad, error, words", [
    (dict(ssm_state=torch.randn(1, 2, 8)), ValueError, ["ssm_state", "4-d"]),
    (dict(xBC=torch.randn(1, 47)), ValueError, ["xBC", "(1, 48)"]),
    (dict(conv_state=torch.randn(1, 48)), ValueError, ["conv_state", "3-d"]),
    (dict(conv_weight=torch.randn(40, 4)), ValueError, ["conv_weight", "(48, W)"]),
    (dict(dt=torch.randn(1, 3)), ValueError, ["dt", "(1, 2)"]),
    (dict(A=torch.randn(2, 8)), ValueError, ["A", "(2)"]),
    (dict(D=torch.randn(3)), ValueError, ["D", "(2,)"]),
    (dict(z=torch.randn(1, 2, 7)), ValueError, ["z", "(1, 2, 8)"]),
    (dict(xBC=torch.randint(0, 3, (1, 48))), TypeError, ["xBC", "dtype"]),
    (dict(G=3), ValueError, ["ngroups", "3"]),
])
def test_bad_input_is_named(bad, error, words):
    inp = make(1, 2, 8, 16, 1, 4, 4, torch.float32, torch.device("cpu"), {"z+D"})
    inp.update(bad)
    with pytest.raises(error) as info:
        run(css.conv_state_step, inp)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"

