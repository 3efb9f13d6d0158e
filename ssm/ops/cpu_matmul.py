"""Matrix products of the modules and fused paths, with half-precision operands on the CPU widened
to float32: without native bfloat16 / float16 arithmetic (no AVX512-BF16, no AMX), torch's CPU
half-precision GEMM runs 5-10x slower than its float32 one (512 x 768 x 3072: 250 ms in bfloat16,
32 ms through float32, on the 2-core AMD EPYC of benchmarks/results/cpu). Widened, the product has
the same float32 accumulation and one rounding of the result, as torch's own half GEMM; autograd
follows the casts (its gradients' products run in float32 too). Everything else is F.linear / @.
WIDEN_HALF = False (SSM_CPU_HALF_MATMUL=native) keeps torch's half GEMM."""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_HALF = (torch.bfloat16, torch.float16)


def _native_half() -> bool:
    cpu = getattr(torch, "cpu", None)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, p, lambda: False)() for p in probes)


WIDEN_HALF = os.environ.get("SSM_CPU_HALF_MATMUL", "") != "native" and not _native_half()


def _widen(a: Tensor, b: Tensor) -> bool:
    return WIDEN_HALF and a.dtype in _HALF and b.dtype == a.dtype and a.device.type == "cpu"


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """F.linear(x, weight, bias); half precision on the CPU through float32, rounded back."""
    if _widen(x, weight):
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)
    return F.linear(x, weight, bias)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b; half precision on the CPU through float32, rounded back."""
    if _widen(a, b):
        return (a.float() @ b.float()).to(a.dtype)
    return a @ b


def module_linear(layer: nn.Module, x: Tensor) -> Tensor:
    """layer(x); a plain nn.Linear through linear() (a wrapped or adapted layer keeps its own forward)."""
    if type(layer) is nn.Linear:
        return linear(x, layer.weight, layer.bias)
    return layer(x)
