"""Prepared kernel calls of the eager plans (ssm/ops/cpu/bind/prepared.h, _kernels.prepare): each
planned CPU call of the small ops runs a call its binding checked once, with the same results as
the plain binding, and the prepared call checks what it is given."""
import pytest
import torch

import ssm.ops as ops
from ssm.ops import _kernels, conv, gated_norm, norm, state_step
from ssm.ops.python import reference
from ssm.utils import dispatch
from tests.ops.harness import assert_close, to64, use_backend

cpu = dispatch.cpu_module()


def _step_args():
    # Mamba-1: state (2, 6, 4); x, dt, z (2, 6); A (6, 4); B, C (2, 4); D, dt_bias (6,)
    return (torch.randn(2, 6, 4), torch.randn(2, 6), torch.randn(2, 6), -torch.rand(6, 4) - 0.1,
            torch.randn(2, 4), torch.randn(2, 4), torch.randn(6), torch.randn(2, 6), torch.randn(6))


def _calls():
    """(name, plan cache, function running the op once on fixed inputs, returning its outputs)."""
    s, x, dt, A, B, C, D, z, db = _step_args()
    xc, conv_state, w, b = torch.randn(2, 6), torch.randn(2, 6, 4), torch.randn(6, 4), torch.randn(6)
    xl, wl, bl, res = torch.randn(3, 16), torch.randn(16), torch.randn(16), torch.randn(3, 16)
    xs = torch.randn(2, 6, 7)
    return [
        ("state step", state_step._plans, lambda: (ops.selective_state_step(s, x, dt, A, B, C, D, z, db), s)),
        ("conv update", conv._update_plans, lambda: (ops.causal_conv1d_update(xc, conv_state, w, b, "silu"),
                                                     conv_state)),
        ("conv", conv._fwd_plans, lambda: ops.dw_causal_conv(xs, w, b, "silu", initial_states=conv_state[:, :, 1:],
                                                              return_final_states=True)),
        ("layer norm", norm._plans, lambda: ops.layer_norm_fn(xl, wl, bl, residual=res, prenorm=True,
                                                               residual_in_fp32=True, eps=1e-5)),
        ("gated norm", gated_norm._plans, lambda: (ops.rmsnorm_fn(xl, wl, None, z=res, group_size=8),)),
    ]


def _kept_plans(cache):
    """The plans a PlanCache keeps (with torch's guard: lists of (guard, plan) per key)."""
    kept = []
    for entry in cache._plans.values():
        kept += [plan for _, plan in entry] if isinstance(entry, list) else [entry]
    return [plan for plan in kept if plan]


def _is_prepared(plan) -> bool:
    # (the conv's autograd plan is (forward plan, backward kernel))
    plan = plan[0] if isinstance(plan[0], tuple) else plan
    return any(isinstance(e, cpu.PreparedCall) for e in plan)


@pytest.mark.parametrize("index", range(5), ids=[c[0] for c in _calls()])
def test_planned_cpu_calls_are_prepared_and_agree_with_the_plain_binding(index, monkeypatch):
    name, cache, _ = _calls()[index]
    outs = {}
    for prepared in (True, False):
        monkeypatch.setattr(_kernels, "PREPARED", prepared)
        monkeypatch.setattr(cache, "_plans", {})
        torch.manual_seed(0)
        run = _calls()[index][2]
        with use_backend("cpu"), torch.no_grad():
            outs[prepared] = [tuple(t.clone() for t in run() if isinstance(t, torch.Tensor)) for _ in range(3)]
        plans = _kept_plans(cache)
        assert plans, f"{name}: no plan kept"
        assert all(_is_prepared(p) == prepared for p in plans), \
            f"{name}: prepared form {'missing' if prepared else 'used while off'}"
    for a, b in zip(outs[True], outs[False]):
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb), f"{name}: prepared and plain calls differ"


def test_norm_call_with_another_eps_than_its_plan():
    x, weight, bias = torch.randn(2, 16), torch.randn(16), torch.randn(16)
    with use_backend("cpu"), torch.no_grad():
        for eps in (1e-5, 1e-5, 0.5, 0.5, 1e-5):
            y = ops.layer_norm_fn(x, weight, bias, eps=eps)
            assert_close(y, reference.fused_layer_norm(*to64(x, weight, bias), eps=eps, prenorm=False),
                         torch.float32)


def _gemv_call():
    # out (1, 3) = weight (3, 4) . x (1, 4): a prepared gemv with slots x, weight, out
    x, w, out = torch.randn(1, 4), torch.randn(3, 4), torch.empty(1, 3)
    tails = _kernels.ref_tails((_kernels.AS_IS,) * 4, (x, w, None, out))
    call = _kernels.prepare("cpu", "gemv", tails, lambda v: (_kernels.dtype_code(x), 1, 4, 3, *v))
    return call, x, w, out


def test_prepared_call_runs_and_checks_its_arguments():
    call, x, w, out = _gemv_call()
    assert isinstance(call, cpu.PreparedCall) and call.nslots == 3
    call(x, w, None, out, 1)
    assert_close(out, (x.double() @ w.double().t()), torch.float32)
    with pytest.raises(ValueError, match="expected 3 tensors"):
        call(x, w, None, None, 1)
    with pytest.raises(ValueError, match="thread count"):
        call(x, w, None, out, 0)
    with pytest.raises(AttributeError):
        call(x, "w", None, out, 1)


def test_prepare_finds_every_slot_and_only_whole_pointers():
    x, w, out = torch.randn(1, 4), torch.randn(3, 4), torch.empty(1, 3)
    tag, step = cpu.PREPARED_MARK_TAG, cpu.PREPARED_MARK_STEP
    views = [(tag + i * step, *t.stride()) for i, t in enumerate((x, w, out), 1)]
    assert cpu.prepare_gemv(3, 0, 1, 4, 3, views[0], views[1], None, views[2]).nslots == 3
    with pytest.raises(ValueError, match="slot 3"):  # a slot no tensor of the call fills
        cpu.prepare_gemv(4, 0, 1, 4, 3, views[0], views[1], None, views[2])
    derived = (views[2][0] + 8, *views[2][1:])  # a pointer offset from a marker
    with pytest.raises(ValueError, match="derived"):
        cpu.prepare_gemv(3, 0, 1, 4, 3, views[0], views[1], None, derived)
