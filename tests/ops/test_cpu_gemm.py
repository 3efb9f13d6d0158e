"""The C++ CPU GEMM (ssm/ops/cpu/gemm.cpp through cpu_matmul.gemm) against the float64 product: sizes that
are not multiples of its 6 x 16 tile or its cache blocks (1s included), several kc blocks (partial sums kept
in the output or in its float32 scratch), every operand layout (either dimension contiguous, strided views,
a weight shared by a batch), float32 / float16 / bfloat16 operands, float32 or rounded outputs, 2 threads;
and cpu_matmul's products routed through it inside reuse_buffers."""
import pytest
import torch

from ssm.ops import _kernels, cpu_matmul
from ssm.utils import dispatch
from tests.ops.harness import rand

pytestmark = pytest.mark.skipif(not dispatch.has_cpu_kernels(), reason="the C++ CPU module is not built")

SHAPES = [(1, 1, 1), (7, 33, 5), (6, 16, 8), (13, 17, 300), (61, 45, 800), (1, 70, 3), (40, 1, 17)]
BLOCKS = [(0, 0, 0), (16, 12, 32), (24, 6, 16)]


def operand(rows, cols, dtype, layout, batch=None):
    """A (rows, cols) operand (or (batch, rows, cols)): row-major, column-major (a transposed view) or
    strided (every other column of a larger buffer)."""
    lead = () if batch is None else (batch,)
    if layout == "cols":
        return rand(*lead, cols, rows, dtype=dtype).transpose(-1, -2)
    return rand(*lead, rows, cols, dtype=dtype, noncontig=layout == "strided")


def check(out, a, b):
    """|out - a @ b| within the output's rounding plus float32 accumulation, element by element."""
    a64, b64 = a.double(), b.double()
    ref, size = a64 @ b64, a64.abs() @ b64.abs()
    assert out.shape == ref.shape and not torch.isnan(out).any(), "unwritten or wrong-shaped output"
    eps = torch.finfo(out.dtype).eps
    bound = eps * ref.abs() + 1e-5 * size + 1e-30
    err = (out.double() - ref).abs()
    assert (err <= bound).all(), f"max error {err.max().item():.3g}, worst / bound {(err / bound).max().item():.3g}"


def poisoned(*shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("out_float32", [False, True])
@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("blocks", BLOCKS)
def test_gemm_matches_float64(dtype, out_float32, M, N, K, blocks):
    out_dtype = torch.float32 if out_float32 else dtype
    for la, lb in [("rows", "rows"), ("rows", "cols"), ("cols", "rows"), ("strided", "cols")]:
        a, b = operand(M, K, dtype, la), operand(K, N, dtype, lb)
        out = cpu_matmul.gemm(a, b, poisoned(M, N, dtype=out_dtype), blocks)
        check(out, a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemm_batched_with_a_shared_weight_and_strided_output(dtype):
    # w (M, K) shared by the batch; x (batch, K, N) L-contiguous as a conv output; out written transposed
    w, x = rand(23, 97, dtype=dtype), operand(97, 50, dtype, "cols", batch=3)
    out = poisoned(3, 50, 23, dtype=dtype).transpose(1, 2)
    cpu_matmul.gemm(w, x, out, (32, 12, 16))
    check(out, w.expand(3, -1, -1), x)
    # both operands batched
    a = operand(9, 40, dtype, "strided", batch=2)
    out = cpu_matmul.gemm(a, x[:2, :40], poisoned(2, 9, 50, dtype=dtype))
    check(out, a, x[:2, :40])


def test_gemm_two_threads_and_empty_sum(monkeypatch):
    monkeypatch.setattr(_kernels, "PARALLEL_MIN_WORK", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a, b = rand(50, 300, dtype=torch.bfloat16), operand(300, 77, torch.bfloat16, "cols")
        check(cpu_matmul.gemm(a, b, poisoned(50, 77, dtype=torch.bfloat16), (128, 12, 0)), a, b)
    finally:
        torch.set_num_threads(threads)
    out = cpu_matmul.gemm(rand(4, 0), rand(0, 5), poisoned(4, 5, dtype=torch.float32))
    assert torch.equal(out, torch.zeros(4, 5))


def test_gemm_rejects_a_mixed_output_dtype():
    a = rand(4, 8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="out_dtype"):
        cpu_matmul.gemm(a, a.t(), torch.empty(4, 4, dtype=torch.float16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_products_without_autograd_run_through_it(dtype, monkeypatch):
    monkeypatch.setattr(cpu_matmul, "WIDEN_HALF", True)
    calls = []
    real = cpu_matmul.gemm
    monkeypatch.setattr(cpu_matmul, "gemm", lambda *args: calls.append(args[0].dtype) or real(*args))
    x, w = rand(2, 37, 96, dtype=dtype, noncontig=True), rand(53, 96, dtype=dtype, scale=96 ** -0.5)
    u, xs = rand(40, 96, dtype=dtype), rand(3, 96, 11, dtype=dtype)
    with cpu_matmul.reuse_buffers(), torch.no_grad():
        out = [cpu_matmul.linear(x, w), cpu_matmul.matmul(w, u.t()), cpu_matmul.matmul(w, xs)]
        assert calls == [dtype] * 3
        monkeypatch.setattr(cpu_matmul, "GEMM", "torch")  # the switch back to torch's widened GEMM
        cpu_matmul.linear(x, w)
        assert len(calls) == 3
    assert [o.dtype for o in out] == [dtype] * 3
    check(out[0], x, w.t())
    check(out[1], w, u.t())
    check(out[2], w.expand(3, -1, -1), xs)
