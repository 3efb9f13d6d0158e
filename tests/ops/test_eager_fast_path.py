"""The eager fast paths of the small ops (plans cached per argument metadata) and the cached
float32 copies of small parameters: same results as the general path, checks still enforced,
caches invalidated when what they depend on changes."""
import pytest
import torch

import ssm.ops as ops
from ssm.ops import _kernels, conv, norm, ssd, state_step
from ssm.ops.python import reference
from tests.ops.harness import assert_close, to64, use_backend


def _step_args(dtype=torch.float32):
    # Mamba-2 per-head forms: state (2, 3, 4, 8); x (2, 3, 4); dt (2, 3); A, D, dt_bias (3,); B, C (2, 1, 8)
    state = torch.randn(2, 3, 4, 8).to(dtype)
    x, dt = torch.randn(2, 3, 4).to(dtype), torch.randn(2, 3).to(dtype)
    A, D, dt_bias = -torch.rand(3) - 0.1, torch.randn(3).to(dtype), torch.randn(3).to(dtype)
    B, C = torch.randn(2, 1, 8).to(dtype), torch.randn(2, 1, 8).to(dtype)
    return state, x, dt, A, B, C, D, dt_bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_step_repeated_calls_match_reference(dtype):
    state, x, dt, A, B, C, D, dt_bias = _step_args(dtype)
    expect_state = state.double()
    with torch.no_grad():
        for _ in range(3):  # the first call makes the plan, the next ones run it
            y = ops.selective_state_update(state, x, dt, A, B, C, D, dt_bias=dt_bias, dt_softplus=True)
            s64, x64, dt64, A64, B64, C64, D64, db64 = to64(expect_state, x, dt, A, B, C, D, dt_bias)
            ref = state_step.selective_state_update_ref(s64, x64, dt64, A64, B64, C64, D64, dt_bias=db64,
                                                        dt_softplus=True)
            expect_state = s64
            assert_close(y, ref, dtype)
            assert_close(state, expect_state, dtype)


def test_state_step_plan_of_other_strides_is_its_own():
    # a plan keeps each argument's kernel-side strides: x and B of the same shapes but other strides
    state, x, dt, A, B, C, D, dt_bias = _step_args()
    x_t = torch.randn(4, 3, 2).permute(2, 1, 0)  # (2, 3, 4), strides (1, 2, 6)
    B_t = torch.randn(8, 1, 2).permute(2, 1, 0)
    with torch.no_grad():
        for xs, Bs in ((x, B), (x_t, B_t), (x_t.contiguous(), B_t.contiguous())):
            s = state.clone()
            y = ops.selective_state_update(s, xs, dt, A, Bs, C, D, dt_bias=dt_bias, dt_softplus=True)
            s64 = state.double()
            ref = state_step.selective_state_update_ref(s64, *to64(xs, dt, A, Bs, C, D), dt_bias=dt_bias.double(),
                                                        dt_softplus=True)
            assert_close(y, ref, torch.float32)
            assert_close(s, s64, torch.float32)


def test_state_step_checks_still_run_after_a_cached_plan():
    state, x, dt, A, B, C, D, dt_bias = _step_args()
    with torch.no_grad():
        ops.selective_state_update(state, x, dt, A, B, C, D, dt_bias=dt_bias, dt_softplus=True)
        with pytest.raises(ValueError, match="B"):
            ops.selective_state_update(state, x, dt, A, B[:, :, :5], C, D, dt_bias=dt_bias, dt_softplus=True)
        with pytest.raises(TypeError, match="dt"):
            ops.selective_state_update(state, x, dt.long(), A, B, C, D, dt_bias=dt_bias, dt_softplus=True)


def test_forced_backend_is_honoured_after_a_cached_plan(monkeypatch):
    state, x, dt, A, B, C, D, dt_bias = _step_args()
    calls = []
    real = reference.selective_state_step
    monkeypatch.setattr(reference, "selective_state_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        ops.selective_state_update(state, x, dt, A, B, C, D, dt_bias=dt_bias, dt_softplus=True)
        assert not calls  # the C++ kernel ran
        with use_backend("reference"):
            ops.selective_state_update(state, x, dt, A, B, C, D, dt_bias=dt_bias, dt_softplus=True)
    assert calls == [1]


@pytest.mark.parametrize("weight_3d", [False, True])
def test_conv_update_repeated_calls_match_reference(weight_3d):
    # x (2, 6); conv_state (2, 6, 4); weight (6, 4) or (6, 1, 4); bias (6,) in bfloat16 (cached float32 copy)
    x_all = torch.randn(3, 2, 6)
    state = torch.randn(2, 6, 4)
    weight, bias = torch.randn(6, 1, 4) if weight_3d else torch.randn(6, 4), torch.randn(6).to(torch.bfloat16)
    expect = state.double()
    with torch.no_grad():
        for x in x_all:
            y = ops.causal_conv1d_update(x, state, weight, bias, "silu")
            ref = reference.dw_causal_conv_update(x.double(), expect, weight.reshape(6, 4).double(),
                                                  bias.double(), "silu")
            assert_close(y, ref, torch.float32)
            assert_close(state, expect, torch.float32)
    with pytest.raises(ValueError, match="conv_state"):
        ops.causal_conv1d_update(x_all[0], state[:, :, :2], weight, bias, "silu")


@pytest.mark.parametrize("weight_3d", [False, True])
def test_conv_forward_repeated_calls_match_reference(weight_3d):
    # x (2, 6, 5); weight (6, 4) or (6, 1, 4); bias (6,); initial_states (2, 6, 3)
    weight, bias = torch.randn(6, 1, 4) if weight_3d else torch.randn(6, 4), torch.randn(6)
    init = torch.randn(2, 6, 3)
    with torch.no_grad():
        for _ in range(3):  # the first call makes the plan, the next ones run it
            x = torch.randn(2, 6, 5)
            y, final = ops.dw_causal_conv(x, weight, bias, "silu", initial_states=init, return_final_states=True)
            ref = reference.dw_causal_conv(x.double(), weight.reshape(6, 4).double(), bias.double(), "silu",
                                           initial_states=init.double(), return_final_states=True)
            assert_close(y, ref[0], torch.float32)
            assert_close(final, ref[1], torch.float32)
            assert_close(ops.dw_causal_conv(x, weight, None, None), reference.dw_causal_conv(
                x.double(), weight.reshape(6, 4).double(), None, None), torch.float32)
        with pytest.raises(ValueError, match="initial_states"):
            ops.dw_causal_conv(x, weight, bias, "silu", initial_states=init[:, :, :2], return_final_states=True)


def test_norm_fast_path_matches_general_path_and_checks():
    x, res = torch.randn(1, 3, 16), torch.randn(1, 3, 16)
    weight, bias = torch.randn(16), torch.randn(16)
    with torch.no_grad():
        for _ in range(2):
            y, r = ops.layer_norm_fn(x, weight, bias, residual=res, prenorm=True, residual_in_fp32=True)
            ref = reference.fused_layer_norm(x.double(), weight.double(), bias.double(), res.double(),
                                             prenorm=True)
            assert_close(y, ref[0], torch.float32)
            assert_close(r, ref[1], torch.float32)
        with pytest.raises(ValueError, match="residual"):
            ops.layer_norm_fn(x, weight, bias, residual=res[:, :2], prenorm=True)
    # with autograd the custom op runs (gradients flow)
    xg = x.clone().requires_grad_()
    ops.layer_norm_fn(xg, weight, bias, residual=res).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def _rms_plan(x, weight):
    # the plan kept for an RMSNorm call without bias or residual, prenorm off
    return norm._plans.lookup(norm._flags(True, False, False) + (torch.is_grad_enabled(),), (x, weight, None, None))


def test_plans_are_cached_per_signature():
    x, weight = torch.randn(2, 8), torch.randn(8)
    with torch.no_grad():
        ops.rms_norm_fn(x, weight, None)
        assert _rms_plan(x, weight)
        other = torch.randn(3, 8)
        assert _rms_plan(other, weight) is None
        ops.rms_norm_fn(other, weight, None)
        assert _rms_plan(other, weight) and _rms_plan(x, weight)
    # a non-contiguous x takes the general path (no plan), with the same result
    wide = torch.randn(2, 16)[:, ::2]
    with torch.no_grad():
        y = ops.rms_norm_fn(wide, weight, None)
        assert _rms_plan(wide, weight) is False
    assert_close(y, reference.fused_layer_norm(wide.double(), weight.double(), None, is_rms=True, eps=1e-6,
                                               prenorm=False),
                 torch.float32)


def test_float32_copy_follows_in_place_updates():
    p = torch.nn.Parameter(torch.randn(5).to(torch.bfloat16))
    with torch.no_grad():
        first = _kernels.float32_param(p)
        assert first.dtype == torch.float32 and torch.equal(first, p.float())
        assert _kernels.float32_param(p) is first  # unchanged: the cached copy
        p.mul_(2)  # in place: the version counter moves
        second = _kernels.float32_param(p)
        assert second is not first and torch.equal(second, p.float())
        p.data = torch.randn(5).to(torch.bfloat16)  # new data
        third = _kernels.float32_param(p)
        assert torch.equal(third, p.float())


def test_float32_copy_not_cached_under_autograd():
    p = torch.nn.Parameter(torch.randn(5).to(torch.bfloat16))
    out = _kernels.float32_param(p)
    assert out.requires_grad  # the cast is recorded: gradients reach p
    out.sum().backward()
    assert p.grad is not None


def test_float32_copy_dropped_with_its_parameter():
    p = torch.randn(5).to(torch.bfloat16)
    with torch.no_grad():
        _kernels.float32_param(p)
    ident = id(p)
    assert ident in _kernels._float32_copies
    del p
    assert ident not in _kernels._float32_copies


def test_float32_params_in_bf16_decode_follow_weight_updates():
    # Mamba-1 decode in bfloat16: D is converted once, and again after it changes in place
    state = torch.zeros(1, 6, 4, dtype=torch.bfloat16)
    x, dt, z = (torch.randn(1, 6).to(torch.bfloat16) for _ in range(3))
    A, B, C = -torch.rand(6, 4) - 0.1, torch.randn(1, 4).to(torch.bfloat16), torch.randn(1, 4).to(torch.bfloat16)
    D = torch.randn(6).to(torch.bfloat16)
    with torch.no_grad():
        y1 = ops.selective_state_step(state.clone(), x, dt, A, B, C, D, z)
        D.add_(1.0)
        y2 = ops.selective_state_step(state.clone(), x, dt, A, B, C, D, z)
    ref = reference.selective_state_step(*to64(state, x, dt, A, B, C, D, z), softplus=True)
    assert_close(y2, ref, torch.bfloat16)
    assert not torch.equal(y1, y2)


@pytest.mark.cuda
def test_cuda_kernel_stream_is_the_current_stream():
    """exec_arg's raw stream getter gives torch's current stream, on the default and on a side stream."""
    x = torch.zeros(1, device="cuda")
    assert _kernels.exec_arg("cuda", x) == torch.cuda.current_stream().cuda_stream
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        assert _kernels.exec_arg("cuda", x) == side.cuda_stream != torch.cuda.default_stream().cuda_stream
    # the raw getter stays in use where torch has it (a failing call would have switched it off)
    assert (_kernels._raw_stream is not None) == hasattr(torch._C, "_cuda_getCurrentRawStream")


def test_plan_made_under_no_grad_is_not_used_with_autograd():
    # parameters that require grad, planned under no_grad: with grad enabled the call must still
    # go through autograd (the plan's key holds the grad mode)
    x, residual = torch.randn(3, 8), torch.randn(3, 8)
    weight, bias = torch.nn.Parameter(torch.randn(8)), torch.nn.Parameter(torch.randn(8))
    with torch.no_grad():
        for _ in range(2):
            y = ops.layer_norm_fn(x, weight, bias, residual=residual, eps=1e-5)
            assert not y.requires_grad
    y = ops.layer_norm_fn(x, weight, bias, residual=residual, eps=1e-5)
    assert y.requires_grad
    y.sum().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()


def test_plan_cache_tells_strides_dtypes_and_types_apart():
    cache, x = _kernels.PlanCache(), torch.randn(4, 6)
    sig, plan = cache.find((True,), (x, None))
    assert plan is None
    cache[sig] = "plan"
    assert cache.lookup((True,), (torch.randn(4, 6), None)) == "plan"
    for other in (torch.randn(6, 4).t(), torch.randn(4, 6).double(), torch.nn.Parameter(torch.randn(4, 6)),
                  torch.randn(4, 7)):
        assert cache.lookup((True,), (other, None)) is None
    assert cache.lookup((False,), (x, None)) is None
    assert cache.lookup((True,), (None, x)) is None


def test_one_tensor_passed_twice_still_gives_the_right_result():
    # torch's guard rejects a tensor passed twice (aliasing): those calls take the checked path
    x, weight = torch.randn(4, 8), torch.randn(8)
    with torch.no_grad():
        for _ in range(3):
            y, res = ops.layer_norm_fn(x, weight, None, residual=x, prenorm=True, eps=1e-5)
            ref = reference.fused_layer_norm(x.double(), weight.double(), None, residual=x.double(), eps=1e-5,
                                             prenorm=True)
            assert_close(y, ref[0], torch.float32)
            assert_close(res, ref[1], torch.float32)


def _ssd_args(dtype=torch.float32, D_heads=True):
    # x (2, 37, 3, 4); dt (2, 37, 3) in x's dtype; A, dt_bias (3,), D (3,) or (3, 4) float32; B, C (2, 37, 1, 8);
    # initial_states (2, 3, 4, 8) float32; seq_idx (2, 37) int32
    x, dt = torch.randn(2, 37, 3, 4).to(dtype), torch.randn(2, 37, 3).to(dtype)
    A, dt_bias = -torch.rand(3) - 0.1, torch.randn(3) * 0.5
    D = torch.randn(3) if D_heads else torch.randn(3, 4)
    B, C = torch.randn(2, 37, 1, 8).to(dtype), torch.randn(2, 37, 1, 8).to(dtype)
    init = torch.randn(2, 3, 4, 8)
    seq_idx = torch.sort(torch.randint(0, 3, (2, 37)), dim=1).values.to(torch.int32)
    return x, dt, A, B, C, D, dt_bias, init, seq_idx


def _ssd_plan(x, dt, A, B, C, D, dt_bias, init, seq_idx, final=True):
    flags = (int, 16, True, (0.0, float("inf")), final, torch.is_grad_enabled())
    return ssd._plans.lookup(flags, (x, dt, A, B, C, D, None, dt_bias, init, seq_idx))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("D_heads", [True, False])
def test_ssd_repeated_calls_match_reference(dtype, D_heads, monkeypatch):
    runs, run_plan = [], ssd._run_plan
    monkeypatch.setattr(ssd, "_run_plan", lambda *a: runs.append(1) or run_plan(*a))
    args = _ssd_args(dtype, D_heads)
    x, dt, A, B, C, D, dt_bias, init, seq_idx = args
    with torch.no_grad():
        for i in range(3):  # the first call makes the plan, the next ones run it
            y, final = ops.ssd_chunk_scan(x, dt, A, B, C, 16, D, dt_bias=dt_bias, dt_softplus=True,
                                          initial_states=init, seq_idx=seq_idx, return_final_states=True)
            assert _ssd_plan(*args) and len(runs) == i
            want = reference.ssd_chunk_scan(*to64(x, dt, A, B, C), 16, D.double(), dt_bias=dt_bias.double(),
                                            dt_softplus=True, initial_states=init.double(), seq_idx=seq_idx,
                                            return_final_states=True)
            assert_close(y, want[0], dtype)
            assert_close(final, want[1], dtype)
            assert y.dtype == dtype and final.dtype == torch.float32
            x = torch.randn_like(x, dtype=torch.float32).to(dtype)  # new data, same metadata: the plan
            args = (x,) + args[1:]
        y = ops.ssd_chunk_scan(x, dt, A, B, C, 16, D, dt_bias=dt_bias, dt_softplus=True)  # other flags: checked
        assert len(runs) == 2
        want = reference.ssd_chunk_scan(*to64(x, dt, A, B, C), 16, D.double(), dt_bias=dt_bias.double(),
                                        dt_softplus=True)
        assert_close(y, want, dtype)


def test_ssd_checks_and_autograd_after_a_cached_plan():
    x, dt, A, B, C, D, dt_bias, init, seq_idx = _ssd_args()
    kw = dict(dt_bias=dt_bias, dt_softplus=True, initial_states=init, seq_idx=seq_idx, return_final_states=True)
    with torch.no_grad():
        ops.ssd_chunk_scan(x, dt, A, B, C, 16, D, **kw)
        ops.ssd_chunk_scan(x, dt, A, B, C, 16, D, **kw)
        with pytest.raises(ValueError, match="C"):
            ops.ssd_chunk_scan(x, dt, A, B, C[:, :, :, :5], 16, D, **kw)
        with pytest.raises(ValueError, match="initial_states"):
            ops.ssd_chunk_scan(x, dt, A, B, C, 16, D, **{**kw, "initial_states": init[:1]})
        with pytest.raises(ValueError, match="dt_limit"):
            ops.ssd_chunk_scan(x, dt, A, B, C, 16, D, **kw, dt_limit=(1.0, 0.0))
    ops.ssd_chunk_scan(x, dt, A, B, C, 16, D, **kw)  # grad mode on, nothing requires grad: a plan of its own
    assert _ssd_plan(x, dt, A, B, C, D, dt_bias, init, seq_idx)
    xg = x.clone().requires_grad_()
    y, final = ops.ssd_chunk_scan(xg, dt, A, B, C, 16, D, **kw)  # autograd: the custom op, not the plan
    assert y.requires_grad
    (y.sum() + final.sum()).backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
