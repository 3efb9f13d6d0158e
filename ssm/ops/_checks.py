"""Argument validation shared by the public ops: errors name the argument and say what was
expected and what arrived (shape, dtype, device)."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INT_DTYPES = (torch.int32, torch.int64)


def _fmt_shape(shape: Sequence) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def tensor(name: str, t, *, ndim: int | Iterable[int] | None = None, shape: Sequence | None = None,
           dtypes: Sequence[torch.dtype] | None = FLOAT_DTYPES, device: torch.device | None = None,
           optional: bool = False) -> None:
    """Check one tensor argument. ``shape`` entries may be None (any size)."""
    if t is None:
        if optional:
            return
        raise TypeError(f"{name}: expected a tensor, got None")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None:
        dim = t.dim()
        if dim != ndim if isinstance(ndim, int) else dim not in ndim:
            allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
            want = " or ".join(f"{n}-d" for n in allowed)
            expect = f"shape {_fmt_shape(shape)}" if shape is not None else want
            raise ValueError(f"{name}: expected a {want} tensor ({expect}), got shape {tuple(t.shape)}")
    if shape is not None:
        for s, a in zip(shape, t.shape):  # a plain loop: this runs on every op call
            if s is not None and s != a:
                raise ValueError(f"{name}: expected shape {_fmt_shape(shape)}, got {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {t.device}")


def seq_idx(t, batch: int, seqlen: int, device: torch.device) -> None:
    tensor("seq_idx", t, shape=(batch, seqlen), dtypes=INT_DTYPES, device=device, optional=True)


def cu_seqlens(t, seqlen: int, device: torch.device, batch: int) -> None:
    """cu_seqlens: 1-d integer, starts at 0, nondecreasing, ends at L; needs batch 1."""
    if t is None:
        return
    tensor("cu_seqlens", t, ndim=1, dtypes=INT_DTYPES, device=device)
    if batch != 1:
        raise ValueError(f"cu_seqlens: packed sequences need batch size 1, got batch {batch}")
    if t.numel() < 2:
        raise ValueError(f"cu_seqlens: expected at least 2 entries (nseq + 1), got {t.numel()}")
    if torch.compiler.is_compiling():
        return  # value checks would need a host sync inside the graph
    values = t.tolist()
    if values[0] != 0 or values[-1] != seqlen:
        raise ValueError(f"cu_seqlens: expected to start at 0 and end at the sequence length {seqlen}, "
                         f"got {values[0]} .. {values[-1]}")
    if any(b < a for a, b in zip(values, values[1:])):
        raise ValueError("cu_seqlens: expected nondecreasing offsets, got a decreasing step")


def same_device(device: torch.device, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and isinstance(t, torch.Tensor) and t.device != device:
            raise ValueError(f"{name}: expected a tensor on {device}, got one on {t.device}")


def choice(name: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {tuple(allowed)}, got {value!r}")


def positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
