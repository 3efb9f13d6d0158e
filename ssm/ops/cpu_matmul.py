"""Matrix products of the modules and fused paths, with half-precision operands on the CPU widened
to float32: without native bfloat16 / float16 arithmetic (no AVX512-BF16, no AMX), torch's CPU
half-precision GEMM runs 5-10x slower than its float32 one (512 x 768 x 3072: 250 ms in bfloat16,
32 ms through float32, on the 2-core AMD EPYC of benchmarks/results/cpu). Widened, the product has
the same float32 accumulation and one rounding of the result, as torch's own half GEMM; autograd
follows the casts (its gradients' products run in float32 too). Everything else is F.linear / @.
WIDEN_HALF = False (SSM_CPU_HALF_MATMUL=native) keeps torch's half GEMM.

Without autograd inside :func:`reuse_buffers` (a model's forward), a half-precision product without
bias runs through the C++ GEMM (ssm/ops/cpu/gemm.cpp; ``GEMM`` = SSM_CPU_GEMM, "ssm" by default,
"torch" for the widened torch path below): it widens the bf16 / fp16 operands as it packs them and
writes the rounded result where it belongs, with no float32 copies of operands or result. On the
2-core AMD EPYC it runs the Mamba-1 prefill's products at about torch's float32 GEMM rate with the
widening and rounding passes saved: a tie or a small gain over the widened path
(benchmarks/bench_gemm_cpu.py, README); float32 products stay torch's.

Inside :func:`reuse_buffers` (a model's forward), a product without autograd widens its operands
and writes its float32 result into buffers kept until the scope ends, instead of fresh ones: a
fresh buffer above glibc's 32 MiB mmap limit (in_proj's float32 output at 8 x 512 tokens: 50 MB)
is mapped anew and zeroed by the kernel on every call (~10% of a bf16 prefill's CPU time)."""
from __future__ import annotations

import contextlib
import math
import os
import threading
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssm.ops import _kernels
from ssm.utils import dispatch

_HALF = (torch.bfloat16, torch.float16)


def _native_half() -> bool:
    cpu = getattr(torch, "cpu", None)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, p, lambda: False)() for p in probes)


WIDEN_HALF = os.environ.get("SSM_CPU_HALF_MATMUL", "") != "native" and not _native_half()
GEMM = os.environ.get("SSM_CPU_GEMM", "ssm")


def _widen(a: Tensor, b: Tensor) -> bool:
    return WIDEN_HALF and a.dtype in _HALF and b.dtype == a.dtype and a.device.type == "cpu"


def widens(a: Tensor, b: Tensor) -> bool:
    """A product of a and b here goes through float32 (half precision on the CPU)."""
    return _widen(a, b)


_SCOPE = threading.local()  # depth of reuse_buffers and its buffers: {role: flat float32 tensor}


@contextlib.contextmanager
def reuse_buffers():
    """Products without autograd inside reuse one float32 buffer per role (operands, result) of
    this thread, grown to the largest size asked; they are freed when the outermost scope ends."""
    depth = getattr(_SCOPE, "depth", 0)
    if depth == 0:
        _SCOPE.buffers = {}
    _SCOPE.depth = depth + 1
    try:
        yield
    finally:
        _SCOPE.depth = depth
        if depth == 0:
            _SCOPE.buffers = {}


def buffers_for(t: Tensor):
    """reuse_buffers() for a forward on the CPU (``t`` its input), a no-op scope elsewhere or when compiling."""
    if t.device.type != "cpu" or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return reuse_buffers()


def _buffer(role: str, shape) -> Tensor:
    """A float32 tensor of ``shape`` viewing this scope's buffer for ``role``."""
    n = math.prod(shape)
    buf = _SCOPE.buffers.get(role)
    if buf is None or buf.numel() < n:
        buf = _SCOPE.buffers[role] = torch.empty(n, dtype=torch.float32)
    return buf[:n].view(shape)


def _reusing(*tensors: Optional[Tensor]) -> bool:
    """Inside reuse_buffers, no autograd, not compiling: the buffers may be used."""
    if not getattr(_SCOPE, "depth", 0) or torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


def _widened(role: str, t: Tensor) -> Tensor:
    """t (2-D) widened into role's buffer, a transposed view kept transposed (no transposing copy)."""
    if not t.is_contiguous() and t.t().is_contiguous():
        return _buffer(role, t.t().shape).copy_(t.t()).t()
    return _buffer(role, t.shape).copy_(t)


def _own_gemm() -> bool:
    """The C++ GEMM is built and chosen (SSM_CPU_GEMM, and no other backend forced by SSM_BACKEND)."""
    return GEMM == "ssm" and dispatch.forced_backend() in (None, "cpu") and dispatch.has_cpu_kernels()


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """F.linear(x, weight, bias); half precision on the CPU through float32, rounded back."""
    if not _widen(x, weight):
        return F.linear(x, weight, bias)
    if weight.dim() != 2 or not _reusing(x, weight, bias):
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)
    if bias is None and _own_gemm():
        # out (..., N) = x (..., K) @ weight^T
        x2 = x.reshape(-1, x.shape[-1])
        return gemm(x2, weight.t(), x.new_empty(x2.shape[0], weight.shape[0])).view(*x.shape[:-1], -1)
    # x2 (M, K) float32; out (M, N) float32
    x2 = _widened("a", x.reshape(-1, x.shape[-1]))
    out = _buffer("out", (x2.shape[0], weight.shape[0]))
    if bias is None:
        torch.mm(x2, _widened("b", weight).t(), out=out)
    else:
        torch.addmm(bias.float(), x2, _widened("b", weight).t(), out=out)
    return out.to(x.dtype).view(*x.shape[:-1], weight.shape[0])


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b; half precision on the CPU through float32, rounded back."""
    if not _widen(a, b):
        return a @ b
    if a.dim() != 2 or b.dim() not in (2, 3) or not _reusing(a, b):
        return (a.float() @ b.float()).to(a.dtype)
    if _own_gemm():
        # out (M, N) or (batch, M, N)
        return gemm(a, b, a.new_empty(*b.shape[:-2], a.shape[0], b.shape[-1]))
    # out (M, N) or (batch, M, N) float32
    out = _buffer("out", (*b.shape[:-2], a.shape[0], b.shape[-1]))
    wide = _widened("b", b) if b.dim() == 2 else _buffer("b", b.shape).copy_(b)
    return torch.matmul(_widened("a", a), wide, out=out).to(a.dtype)


def module_linear(layer: nn.Module, x: Tensor) -> Tensor:
    """layer(x); a plain nn.Linear through linear() (a wrapped or adapted layer keeps its own forward)."""
    if type(layer) is nn.Linear:
        return linear(x, layer.weight, layer.bias)
    return layer(x)


# ---- the C++ GEMM (ssm/ops/cpu/gemm.cpp): bf16 / fp16 operands packed straight into float32 -----

def _batched(t: Tensor) -> Tensor:
    return t if t.dim() == 3 else t.unsqueeze(0)


def gemm(a: Tensor, b: Tensor, out: Tensor, blocks=(0, 0, 0)) -> Tensor:
    """out = a @ b by the C++ kernel, a (M, K) or (batch, M, K), b (K, N) or (batch, K, N), out (M, N)
    or (batch, M, N) float32 or a's dtype, any strides (a 2-d operand is shared by every batch item);
    ``blocks`` the kernel's (kc, mc, nc) cache blocks, 0 for its defaults."""
    a3, b3, c3 = _batched(a), _batched(b), _batched(out)
    batch, M, K = c3.shape[0], a3.shape[-2], a3.shape[-1]
    if K == 0 or out.numel() == 0:  # an empty sum (empty tensors may have no data pointer)
        return out.zero_()
    if a3.shape[0] != batch:
        a3 = a3.expand(batch, M, K)
    if b3.shape[0] != batch:
        b3 = b3.expand(batch, *b3.shape[-2:])
    refs = [_kernels.ref(t) for t in (a3, b3, c3)]
    dispatch.cpu_module().gemm(_kernels.dtype_code(a), _kernels.dtype_code(out), batch, M, c3.shape[-1], K, *refs,
                               *blocks, _kernels.exec_arg("cpu", out, batch * M * c3.shape[-1] * K))
    return out
