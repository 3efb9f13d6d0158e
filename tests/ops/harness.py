"""Shared pieces of the op tests: backends to run, random inputs (non-contiguous on request),
the float64 oracle and per-dtype tolerances."""
from __future__ import annotations

import contextlib
import os

import pytest
import torch

from ssm.utils import dispatch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Relative-norm error bound ||out - ref|| / ||ref|| against the float64 reference.
REL_TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2, torch.float64: 1e-12}


def backends():
    """Every backend present, as pytest params: reference, cpu (required), cuda (GPU only)."""
    params = [pytest.param("reference", id="reference")]
    params.append(pytest.param("cpu", id="cpu"))
    params.append(pytest.param("cuda", id="cuda", marks=pytest.mark.cuda))
    return params


def device_of(backend: str) -> torch.device:
    return torch.device("cuda" if backend == "cuda" else "cpu")


@contextlib.contextmanager
def use_backend(backend: str):
    """Force SSM_BACKEND for the duration (a forced backend that cannot run raises)."""
    if backend == "cpu":
        assert dispatch.has_cpu_kernels(), "the C++ CPU module must be built for the cpu backend tests"
    old = os.environ.get("SSM_BACKEND")
    os.environ["SSM_BACKEND"] = backend
    try:
        yield
    finally:
        if old is None:
            del os.environ["SSM_BACKEND"]
        else:
            os.environ["SSM_BACKEND"] = old


def rand(*shape, dtype=torch.float32, device="cpu", noncontig=False, scale=1.0):
    """Random normal tensor; with ``noncontig`` a strided view of a larger buffer."""
    if not noncontig or len(shape) == 0:
        return (torch.randn(*shape, device=device) * scale).to(dtype)
    big = torch.randn(*shape[:-1], shape[-1] * 2, device=device) * scale
    return big.to(dtype)[..., ::2]


def to64(*tensors):
    return tuple(None if t is None else t.detach().double() if t.is_floating_point() else t for t in tensors)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()  # either may live on the GPU
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert not torch.isnan(out).any(), "NaN in output (unwritten element or numerical failure)"
    denom = ref.norm().item()
    return (out - ref).norm().item() / (denom if denom > 0 else 1.0)


def lowp_bound(lowp_err: float, dtype: torch.dtype, floor: float) -> float:
    """Bound of a low-precision result: twice the error of the reference run in ``dtype`` (lowp_err), plus
    one rounding of the result to ``dtype`` (eps / 2; at least ``floor``). A correctly rounded result has
    up to eps / 2 of relative error, while the reference's own error can come out far below that for a
    few seeds (small, cancelling sums): without that term the bound fails exact answers now and then."""
    return 2 * lowp_err + max(floor, torch.finfo(dtype).eps / 2)


def assert_close(out, ref, dtype, name="output", factor=1.0):
    err = rel_err(out, ref)
    tol = REL_TOL[dtype] * factor
    assert err <= tol, f"{name}: relative error {err:.3g} > {tol:.3g} ({dtype})"
