"""cpu_matmul: half-precision products on the CPU through float32 (torch's half GEMM is 5-10x slower
on CPUs without native bf16), against the float64 product, with gradients; the switch."""
import pytest
import torch

from ssm.ops import cpu_matmul
from tests.ops.harness import assert_close, rand


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_and_matmul_match_float64(dtype, bias, monkeypatch):
    monkeypatch.setattr(cpu_matmul, "WIDEN_HALF", True)
    x = rand(37, 96, dtype=dtype, noncontig=True).requires_grad_()
    w = rand(53, 96, dtype=dtype, scale=96 ** -0.5).requires_grad_()
    b = rand(53, dtype=dtype).requires_grad_() if bias else None
    out = cpu_matmul.linear(x, w, b)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = x64 @ w64.t() + (0 if b is None else b.detach().double())
    assert out.dtype == dtype and out.shape == (37, 53)
    assert_close(out, ref, dtype, "out")
    g = torch.randn(37, 53, dtype=torch.float64)
    out.backward(g.to(dtype))
    ref.backward(g)
    assert x.grad.dtype == dtype and w.grad.dtype == dtype
    assert_close(x.grad, x64.grad, dtype, "dx")
    assert_close(w.grad, w64.grad, dtype, "dw")
    prod = cpu_matmul.matmul(w.detach(), x.detach().t())
    assert prod.dtype == dtype
    assert_close(prod, w64.detach() @ x64.detach().t(), dtype, "matmul")


def test_half_products_run_in_float32_unless_switched_off(monkeypatch):
    seen = []
    real = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w, b=None: seen.append(x.dtype) or real(x, w, b))
    x, w = torch.randn(4, 8).bfloat16(), torch.randn(3, 8).bfloat16()
    monkeypatch.setattr(cpu_matmul, "WIDEN_HALF", True)
    cpu_matmul.linear(x, w)
    monkeypatch.setattr(cpu_matmul, "WIDEN_HALF", False)
    cpu_matmul.linear(x, w)
    assert seen == [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reused_buffers_give_the_same_products(dtype, monkeypatch):
    monkeypatch.setattr(cpu_matmul, "WIDEN_HALF", True)
    x = rand(2, 37, 96, dtype=dtype, noncontig=True)
    w = rand(53, 96, dtype=dtype, scale=96 ** -0.5)
    b = rand(53, dtype=dtype)
    u = rand(40, 96, dtype=dtype)
    fresh = [cpu_matmul.linear(x, w, b), cpu_matmul.linear(x, w), cpu_matmul.matmul(w, u.t())]
    with cpu_matmul.reuse_buffers():
        with cpu_matmul.reuse_buffers():  # nested: the outer scope keeps the buffers
            first = cpu_matmul.linear(x, w, b)
        reused = [first, cpu_matmul.linear(x, w), cpu_matmul.matmul(w, u.t())]
        assert cpu_matmul._SCOPE.buffers, "no buffer was reused"
    assert not cpu_matmul._SCOPE.buffers  # freed with the outermost scope
    # bit for bit the products outside the scope, and no result aliases a buffer (later calls left `first` alone)
    for a, r in zip(fresh, reused):
        assert r.dtype == dtype and r.shape == a.shape and torch.equal(a, r)
    assert_close(first, x.double() @ w.double().t() + b.double(), dtype, "out")


def test_reused_buffers_leave_autograd_alone(monkeypatch):
    monkeypatch.setattr(cpu_matmul, "WIDEN_HALF", True)
    x = rand(6, 16, dtype=torch.bfloat16).requires_grad_()
    w = rand(5, 16, dtype=torch.bfloat16)
    with cpu_matmul.reuse_buffers():
        out = cpu_matmul.linear(x, w)
        assert not cpu_matmul._SCOPE.buffers
    out.sum().backward()
    assert_close(x.grad, w.double().sum(0).expand(6, 16), torch.bfloat16, "dx")
