"""Eager calls with autograd run an autograd.Function built from each op's registered
setup_context / backward instead of the custom op (_library.EagerCustomOp): outputs and
gradients equal the custom-op path's exactly, the graph holds the eager Function, and ops
without a backward still go through the custom op."""
import importlib

import pytest
import torch

import ssm.ops as ops
from ssm.ops import _kernels, _library, conv
from tests.ops.harness import rand
from tests.ops.test_mamba_inner import make_inner
from tests.ops.test_ssd import make_inputs
from tests.ops.test_ssd_split import make_split


def _conv():
    x, w, b = rand(2, 6, 11), rand(6, 4), rand(6)
    return lambda x, w, b: ops.dw_causal_conv(x, w, b, "silu"), dict(x=x, w=w, b=b)


def _conv_unit_mid():
    x, w, b = rand(2, 6, 11, dtype=torch.bfloat16), rand(6, 1, 4), rand(6)
    return lambda x, w, b: ops.dw_causal_conv(x, w, b, "silu"), dict(x=x, w=w, b=b)


def _norm():
    x, w, b, r = rand(3, 5, 16, dtype=torch.bfloat16), rand(16), rand(16), rand(3, 5, 16, dtype=torch.bfloat16)
    return lambda x, w, b, r: ops.fused_layer_norm(x, w, b, r, False, 1e-5, True, True), dict(x=x, w=w, b=b, r=r)


def _gated_norm():
    x, w, z = rand(4, 24), rand(24), rand(4, 24)
    return lambda x, w, z: ops.gated_rms_norm(x, w, None, z, 1e-6, 8, False, True), dict(x=x, w=w, z=z)


def _scan():
    u, delta, z = rand(2, 4, 9), rand(2, 4, 9, scale=0.5), rand(2, 4, 9)
    A, B, C, D = -torch.rand(4, 3) - 0.5, rand(2, 3, 9), rand(2, 3, 9), rand(4)
    return (lambda u, delta, A, B, C, D, z: ops.selective_scan(u, delta, A, B, C, D, z, None, True, True),
            dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z))


def _ssd():
    args = make_inputs(2, 13, 2, 4, 1, 8, torch.float32, "cpu", D="head", z=True, bias=True)
    leaves = {k: v for k, v in args.items() if v is not None and k != "seq_idx"}
    return lambda **kw: ops.ssd_chunk_scan(chunk_size=8, dt_softplus=True, **kw), leaves


def _inner():
    inp = make_inner(2, 4, 9, 3, 2, 4, "cpu")
    return lambda **kw: ops.mamba_inner_fn(**kw), inp


def _split():
    inp = make_split(2, 11, 2, 1, 4, 3, "cpu")
    return lambda **kw: ops.mamba_split_conv1d_scan_combined(chunk_size=8, headdim=4, **kw), inp


CASES = dict(conv=_conv, conv_unit_mid=_conv_unit_mid, norm=_norm, gated_norm=_gated_norm, scan=_scan, ssd=_ssd, mamba_inner=_inner,
             ssd_split=_split)


def _graph_names(outs):
    """Class names of every node of the autograd graph behind outs."""
    seen, stack = set(), [o.grad_fn for o in outs]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(n for n, _ in node.next_functions)
    return {type(n).__name__ for n in seen}


def _run(fn, inputs, seed):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    out = fn(**leaves)
    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o.requires_grad]
    gen = torch.Generator().manual_seed(seed)
    torch.autograd.backward(outs, [torch.randn(o.shape, generator=gen).to(o.dtype) for o in outs])
    return outs, {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_eager_function_equals_custom_op_path(case, monkeypatch):
    fn, inputs = CASES[case]()
    _run(fn, inputs, 1)  # a repeated call takes the op's planned path where it has one (conv)
    outs, grads = _run(fn, inputs, 0)
    names = _graph_names(outs)
    # (the eager Function, or a planned one: _PlannedConv, _PlannedNorm)
    assert any(n.startswith(("Eager_ssm_", "_Planned")) for n in names) and not any(n.startswith("Generated")
                                                                                   for n in names)
    monkeypatch.setattr(_library, "EAGER_DIRECT", False)
    want_outs, want_grads = _run(fn, inputs, 0)
    names = _graph_names(want_outs)
    assert any(n.startswith("Generated") for n in names) and not any(n.startswith("Eager_") for n in names)
    for got, want in zip(outs, want_outs):
        assert torch.equal(got, want)
    for name, got in grads.items():
        assert got is not None and torch.equal(got, want_grads[name]), name


@pytest.mark.parametrize("case", ["conv", "conv_unit_mid"])
def test_repeated_conv_call_takes_the_planned_function(case, monkeypatch):
    monkeypatch.setattr(conv, "_fwd_plans", _kernels.PlanCache())
    fn, inputs = CASES[case]()
    first, _ = _run(fn, inputs, 0)
    again, _ = _run(fn, inputs, 0)
    assert "Eager_ssm_dw_causal_conv_fwdBackward" in _graph_names(first)
    assert "Eager_ssm_dw_causal_conv_plannedBackward" in _graph_names(again)


def test_every_forward_op_with_a_backward_has_an_eager_function():
    for name in ("conv", "norm", "gated_norm", "selective_scan", "ssd", "mamba_inner", "ssd_split"):
        module = importlib.import_module(f"ssm.ops.{name}")
        assert isinstance(module._fwd_op, _library.EagerCustomOp)
        assert module._fwd_op._function is not None, module.__name__
        assert module._bwd_op._function is None, module.__name__


def test_op_without_a_backward_still_refuses_autograd():
    # the in-place conv update has no backward: with autograd it reaches the custom op, which says so
    assert conv._update_op._function is None
    conv_state, x, w = rand(2, 6, 3), rand(2, 6).requires_grad_(), rand(6, 4)
    with pytest.raises(RuntimeError):
        conv._update_op(x, conv_state, w, None, True, None).sum().backward()
