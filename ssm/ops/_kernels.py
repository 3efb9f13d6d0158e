"""How Python hands tensors to the C++/CUDA kernels: a tensor becomes the tuple
(data_ptr, stride_0, ..., stride_{n-1}) (strides in elements), dtypes become small codes,
and the CPU thread count comes from torch."""
from __future__ import annotations

import torch

from ssm.utils import dispatch

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
KERNEL_DTYPES = tuple(DTYPE_CODES)


# Tests set this to fill every kernel output with NaN before the kernel writes it.
POISON_OUTPUTS = False


def empty(shape, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A kernel output buffer (contiguous), NaN-poisoned when POISON_OUTPUTS is set."""
    t = torch.empty(shape, dtype=dtype or like.dtype, device=like.device)
    if POISON_OUTPUTS and t.is_floating_point():
        t.fill_(float("nan"))
    return t


def float32_contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    """A small parameter as the kernels take it: t itself when already float32 and contiguous
    (the common case: no dispatcher round trips), else a float32 contiguous copy."""
    if t is None or (t.dtype == torch.float32 and t.is_contiguous()):
        return t
    return t.float().contiguous()


def ref(t: torch.Tensor | None):
    """The kernel-side view of a tensor, or None."""
    if t is None:
        return None
    return (t.data_ptr(), *t.stride())


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


# Below this many elements of work a CPU kernel runs on the calling thread: waking a pool worker
# costs 5-100 us (the more the busier the machine), more than such a call's whole work.
PARALLEL_MIN_WORK = 1 << 15


def exec_arg(backend: str, like: torch.Tensor, work: int | None = None) -> int:
    """The last argument of every kernel binding: the CPU thread count (torch's; 1 for calls
    under PARALLEL_MIN_WORK elements of ``work``, default ``like.numel()``), or the current CUDA
    stream of the tensor's device (so graph capture and streams work)."""
    if backend == "cpu":
        return 1 if (like.numel() if work is None else work) < PARALLEL_MIN_WORK else torch.get_num_threads()
    return torch.cuda.current_stream(like.device).cuda_stream


def module(backend: str):
    return dispatch.cpu_module() if backend == "cpu" else dispatch.cuda_module()


def kernel_reason(backend: str, kernel: str, *tensors: torch.Tensor | None) -> str | None:
    """None when ``backend``'s module has ``kernel`` and every tensor has a kernel dtype.
    The CPU and CUDA modules bind each kernel under the same name and signature."""
    if (backend, kernel) not in _bound:
        if not hasattr(module(backend), kernel):
            return f"no {backend} kernel {kernel} yet"
        _bound.add((backend, kernel))
    return dtype_reason(*tensors)


# (backend, kernel) pairs whose binding exists (a loaded module's names do not change)
_bound: set[tuple[str, str]] = set()


def dtype_reason(*tensors: torch.Tensor | None) -> str | None:
    """None when every given tensor has a kernel dtype, else why not."""
    for t in tensors:
        if t is not None and t.dtype not in DTYPE_CODES:
            return f"no kernel for dtype {t.dtype}"
    return None
