"""proj_state_step (Mamba-1 decode step with dt_proj folded in) on every backend against the
float64 reference (dt_in @ W^T, then the reference state step), the CUDA kernel against F.linear +
the separate CUDA op in both row shapes, the switch, bad input."""
import pytest
import torch
import torch.nn.functional as F

from ssm.ops import conv_state_step as css
from ssm.ops import proj_state_step as pss
from ssm.ops.python import reference
from tests.ops.harness import DTYPES, assert_close, backends, device_of, rand, use_backend

CASES = [  # (batch, channels, N, rank)
    (1, 8, 16, 3),
    (3, 10, 5, 17),
    (2, 64, 16, 48),
    (4, 33, 32, 1),
]
OPTIONS = ["plain", "z+D", "fp32_state", "all"]


def make(batch, dim, N, R, dtype, device, opts):
    full = "all" in opts
    # x_proj-like row: dt_in, B, C are strided views of one row, as in Mamba1.step ("aligned": the row exactly
    # dt_in, B, C, as there: 16-byte rows when R + 2N is a multiple of 8)
    row = rand(batch, R + 2 * N + (0 if "aligned" in opts else 3), dtype=dtype, device=device)
    dt_in, B, C = row[:, :R], row[:, R:R + N], row[:, R + N:R + 2 * N]
    xz = rand(batch, 2 * dim, dtype=dtype, device=device)
    x, z = xz[:, :dim], xz[:, dim:] if "z+D" in opts or full else None
    sdtype = torch.float32 if "fp32_state" in opts or full else dtype
    return dict(state=rand(batch, dim, N, dtype=sdtype, device=device), x=x, dt_in=dt_in,
                W=rand(dim, R, dtype=dtype, device=device, scale=R ** -0.5),
                A=-torch.exp(rand(dim, N, device=device, scale=0.5)), B=B, C=C,
                D=rand(dim, device=device) if "z+D" in opts or full else None, z=z,
                dt_bias=rand(dim, dtype=dtype, device=device, scale=0.3) - 1.0)


def run(fn, inp):
    return fn(inp["state"], inp["x"], inp["dt_in"], inp["W"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"],
              inp["dt_bias"], True)


def reference_step(state, x, dt_in, W, A, B, C, D, z, dt_bias, softplus):
    return reference.selective_state_step(state, x, dt_in @ W.t(), A, B, C, D, z, dt_bias, softplus)


def as64(inp):
    return {k: (v.detach().double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for k, v in inp.items()}


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("option", OPTIONS)
def test_matches_reference(backend, dtype, case, option):
    inp = make(*case, dtype, device_of(backend), {option})
    ref = as64(inp)
    with use_backend(backend):
        y = run(pss.proj_state_step, inp)
    assert y.dtype == dtype and y.shape == case[:2]
    assert_close(y, run(reference_step, ref), dtype, "y")
    # dt is rounded to the activations' dtype (as a separate projection's output), whatever the state's
    assert_close(inp["state"], ref["state"], dtype, "state")


@pytest.mark.cuda
@pytest.mark.parametrize("wide", ["0", "1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES + [(64, 1536, 16, 48)])
def test_cuda_kernel_equals_separate_ops(wide, dtype, case, monkeypatch):
    monkeypatch.setenv("SSM_STEP_WIDE", wide)
    monkeypatch.setattr(css, "MAX_BATCH", 65535)  # the kernel, whatever batch the modules hand it
    inp = make(*case, dtype, torch.device("cuda"), {"all"})
    state = inp["state"].clone()
    assert pss._fusable(inp["state"], inp["x"], inp["dt_in"], inp["W"], inp["B"], inp["C"], inp["z"])
    y = run(pss.proj_state_step, inp)
    dt = F.linear(inp["dt_in"], inp["W"])
    y_sep = pss.selective_state_step(state, inp["x"], dt, inp["A"], inp["B"], inp["C"], inp["D"], inp["z"],
                                     inp["dt_bias"], True)
    assert_close(y, y_sep, dtype, "y", factor=0.1)
    assert_close(inp["state"], state, torch.float32, "state", factor=10)


# past batch 8 the fused kernel takes ranks up to 64; up to batch 8 any rank (larger ranks at batches 5-8 here)
LARGE_CASES = [(9, 200, 16, 48), (64, 1536, 16, 48), (8, 300, 16, 128), (6, 130, 16, 256), (5, 64, 16, 8), (12, 72, 16, 64)]
# kernel forms (tests/ops/test_state_step.py FORMS): the lean Mamba-1 kernel with dt_proj (mamba1_step_kernel_s5) in
# each row count and the general kernel's dt_proj mode
FORMS = {"general": {"SSM_STEP_LEAN": "0"}, "lean": {}, "m1_r2": {"SSM_STEP_M1": "2"}, "m1_r4": {"SSM_STEP_M1": "4"}}


@pytest.mark.cuda
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", LARGE_CASES)
@pytest.mark.parametrize("option", ["plain", "z+D"])
def test_cuda_large_batches_match_reference(form, dtype, case, option, monkeypatch):
    """Past batch 4 with N = 16 and 16-bit states the fused kernel is the lean Mamba-1 kernel with dt_proj."""
    for name in ("SSM_STEP_LEAN", "SSM_STEP_M1", "SSM_STEP_M1_FORM"):
        monkeypatch.delenv(name, raising=False)
    for name, value in FORMS[form].items():
        monkeypatch.setenv(name, value)
    inp = make(*case, dtype, torch.device("cuda"), {option, "aligned"})
    assert pss._fusable(inp["state"], inp["x"], inp["dt_in"], inp["W"], inp["B"], inp["C"], inp["z"])
    ref = as64(inp)
    y = run(pss.proj_state_step, inp)
    assert_close(y, run(reference_step, ref), dtype, "y")
    assert_close(inp["state"], ref["state"], dtype, "state")


@pytest.mark.cuda
def test_cuda_large_batch_runs_the_lean_kernel():
    inp = make(64, 1536, 16, 48, torch.bfloat16, torch.device("cuda"), {"z+D", "aligned"})
    run(pss.proj_state_step, inp)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        run(pss.proj_state_step, inp)
        torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages()]
    assert any("mamba1_step_kernel" in n for n in names), names
    assert not any("gemm" in n.lower() or "gemv" in n.lower() for n in names), names


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [(1, 4096, 16, 256), (4, 200, 16, 136), (2, 64, 16, 256)])
def test_cuda_small_batch_large_rank_runs_dt_proj_through_the_gemv(dtype, case):
    """Batches <= 4 with dt_proj ranks past both the small-batch step kernel (128) and the fold (64): dt_proj
    through the small-batch GEMV, then the state step."""
    inp = make(*case, dtype, torch.device("cuda"), {"z+D", "aligned"})
    assert not pss._small_step_ok(inp["state"], inp["x"], inp["dt_in"], inp["W"], inp["B"], inp["C"], inp["z"])
    assert not pss._fusable(inp["state"], inp["x"], inp["dt_in"], inp["W"], inp["B"], inp["C"], inp["z"])
    ref = as64(inp)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        y = run(pss.proj_state_step, inp)
        torch.cuda.synchronize()
    assert_close(y, run(reference_step, ref), dtype, "y")
    assert_close(inp["state"], ref["state"], dtype, "state")
    names = [e.key for e in prof.key_averages()]
    assert any("norm_gemv" in n for n in names), names


SMALL_CASES = [(1, 1536, 16, 48), (4, 200, 5, 16), (2, 130, 16, 128), (3, 64, 8, 96)]


@pytest.mark.cuda
@pytest.mark.parametrize("settled", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SMALL_CASES)
@pytest.mark.parametrize("option", OPTIONS)
def test_cuda_small_batch_step_kernel_matches_reference(settled, dtype, case, option):
    """Batches <= 4: the small-batch step kernel (m1_decode_step), its state read before or after the PDL wait."""
    inp = make(*case, dtype, torch.device("cuda"), {option, "aligned"})
    assert pss._small_step_ok(inp["state"], inp["x"], inp["dt_in"], inp["W"], inp["B"], inp["C"], inp["z"])
    ref = as64(inp)
    y = pss.proj_state_step(inp["state"], inp["x"], inp["dt_in"], inp["W"], inp["A"], inp["B"], inp["C"],
                            inp["D"], inp["z"], inp["dt_bias"], True, state_settled=settled)
    assert_close(y, run(reference_step, ref), dtype, "y")
    assert_close(inp["state"], ref["state"], dtype, "state")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", SMALL_CASES)
def test_cuda_small_batch_step_kernel_over_steps(dtype, case):
    """Three consecutive steps on one state (read after the wait: each step's kernel follows the previous one)
    against the float64 reference carried along, new inputs each step."""
    inp = make(*case, dtype, torch.device("cuda"), {"all", "aligned"})
    ref = as64(inp)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        run(pss.proj_state_step, make(*case, dtype, torch.device("cuda"), {"all", "aligned"}))
        torch.cuda.synchronize()
    assert any("m1_decode_step" in e.key for e in prof.key_averages())
    for t in range(3):
        y = run(pss.proj_state_step, inp)
        assert_close(y, run(reference_step, ref), dtype, f"y at step {t}")
        assert_close(inp["state"], ref["state"], dtype, f"state at step {t}", factor=3)  # three steps
        fresh = make(*case, dtype, torch.device("cuda"), {"all", "aligned"})
        for k in ("x", "z", "dt_in", "B", "C"):
            inp[k] = fresh[k]
            ref[k] = fresh[k].double()


def test_falls_back_to_the_separate_ops_when_switched_off(monkeypatch):
    monkeypatch.setattr(css, "FUSED", False)
    inp = make(2, 8, 16, 3, torch.float32, torch.device("cpu"), {"all"})
    assert not pss._fusable(inp["state"], inp["x"], inp["dt_in"], inp["W"], inp["B"], inp["C"], inp["z"])
    ref = as64(inp)
    assert_close(run(pss.proj_state_step, inp), run(reference_step, ref), torch.float32, "y")


@pytest.mark.parametrize("bad, error, words", [
    (dict(state=torch.randn(2, 8)), ValueError, ["state", "3-d"]),
    (dict(x=torch.randn(2, 7)), ValueError, ["x", "(2, 8)"]),
    (dict(dt_in=torch.randn(3, 3)), ValueError, ["dt_in", "(2, *)"]),
    (dict(W=torch.randn(8, 4)), ValueError, ["dt_proj_weight", "(8, 3)"]),
    (dict(A=torch.randn(8, 5)), ValueError, ["A", "(8, 16)"]),
    (dict(B=torch.randn(2, 15)), ValueError, ["B", "(2, 16)"]),
    (dict(D=torch.randn(7)), ValueError, ["D", "(8)"]),
    (dict(z=torch.randn(2, 9)), ValueError, ["z", "(2, 8)"]),
    (dict(x=torch.randint(0, 3, (2, 8))), TypeError, ["x", "dtype"]),
])
def test_bad_input_is_named(bad, error, words):
    inp = make(2, 8, 16, 3, torch.float32, torch.device("cpu"), {"z+D"})
    inp.update(bad)
    with pytest.raises(error) as info:
        run(pss.proj_state_step, inp)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"
