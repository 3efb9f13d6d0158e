"""How Python hands tensors to the C++/CUDA kernels: a tensor becomes the tuple
(data_ptr, stride_0, ..., stride_{n-1}) (strides in elements), dtypes become small codes,
and the CPU thread count comes from torch."""
from __future__ import annotations

import functools
import os
import weakref

import torch

from ssm.utils import dispatch

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
KERNEL_DTYPES = tuple(DTYPE_CODES)


# Tests set this to fill every kernel output with NaN before the kernel writes it.
POISON_OUTPUTS = False


def empty(shape, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A kernel output buffer (contiguous), NaN-poisoned when POISON_OUTPUTS is set."""
    return new_empty(shape, dtype or like.dtype, like.device)


def new_empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """empty() of a dtype and device (what a plan keeps of its outputs)."""
    # sizes unpacked: torch parses ints faster than a sequence (a few us per call otherwise)
    t = torch.empty(*shape, dtype=dtype, device=device) if len(shape) else torch.empty((), dtype=dtype, device=device)
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


# Kernel-side views made as strides, without a torch view: UNIT_LAST appends a size-1 dimension
# of stride 0 (``t.unsqueeze(-1)``), UNIT_MID puts it before the last dimension, UNIT_HEAD makes
# a (H,) tensor a tied (H, 1, 1), DROP_MID drops the middle (size-1) dimension of a 3-d tensor,
# ROWS views a (..., N) tensor whose leading dimensions collapse (contiguous) as (M, N).
AS_IS, UNIT_LAST, UNIT_MID, UNIT_HEAD, DROP_MID, ROWS = range(6)


def refs(modes: tuple, tensors: tuple) -> list:
    """ref() of each tensor (None stays None), reshaped as its mode says."""
    out = []
    for mode, t in zip(modes, tensors):
        if t is None:
            out.append(None)
            continue
        s = t.stride()
        if mode == AS_IS:
            out.append((t.data_ptr(), *s))
        elif mode == UNIT_LAST:
            out.append((t.data_ptr(), *s, 0))
        elif mode == UNIT_MID:
            out.append((t.data_ptr(), *s[:-1], 0, s[-1]))
        elif mode == DROP_MID:
            out.append((t.data_ptr(), s[0], s[2]))
        elif mode == ROWS:
            out.append((t.data_ptr(), s[-2], s[-1]))
        else:
            out.append((t.data_ptr(), s[0], 0, 0))
    return out


# id(param) -> (weak reference, (version, data_ptr, shape, strides), float32 contiguous copy)
_float32_copies: dict[int, tuple] = {}


def float32_param(t: torch.Tensor | None) -> torch.Tensor | None:
    """A small parameter in float32 contiguous for a kernel, without autograd: t itself when it
    already is, else a copy kept while t is alive and unchanged (an in-place update bumps its
    version; ``.data =`` or ``.to()`` changes its data pointer), so decoding in bf16 does not
    convert the same weights on every token."""
    if t is None or (t.dtype == torch.float32 and t.is_contiguous()):
        return t
    if (t.requires_grad and torch.is_grad_enabled()) or t.is_inference():  # (no version counter)
        return t.float().contiguous()
    key = (t._version, t.data_ptr(), t.shape, t.stride(), t.dtype, t.device)
    entry = _float32_copies.get(id(t))
    if entry is not None and entry[0]() is t and entry[1] == key:
        return entry[2]
    copy = t.detach().float().contiguous()
    ident = id(t)
    _float32_copies[ident] = (weakref.ref(t, lambda _, i=ident: _float32_copies.pop(i, None)), key, copy)
    return copy


# os.environ's backing dict on POSIX (bytes keys; os.environ writes go through it): reading it
# directly costs 0.1 us where os.environ.get costs 1-2 us, on every op call
_ENVIRON = os.environ._data if os.name == "posix" and isinstance(getattr(os.environ, "_data", None), dict) else None


def _forced_backend_os():
    return os.environ.get("SSM_BACKEND")


# SSM_BACKEND as set (unparsed, str or bytes): part of the eager fast paths' cache keys. Called on
# every op call: a partial of the backing dict's get (no Python frame) where there is one.
forced_backend_value = functools.partial(_ENVIRON.get, b"SSM_BACKEND") if _ENVIRON is not None else _forced_backend_os


def _metadata(flags: tuple, tensors: tuple) -> tuple:
    """The eager fast paths' plan key without torch's guard: SSM_BACKEND, the call's flags and each
    tensor's type, shape, strides, dtype and device (AttributeError when an argument is not a tensor)."""
    return (forced_backend_value(), *flags, *[
        None if t is None else (type(t), t.shape, t.stride(), t.dtype, t.device) for t in tensors])


try:  # torch.compile's C++ tensor guard: type, dtype, device, sizes, strides, requires_grad in one call
    from torch._C._dynamo.guards import TensorGuards as _TensorGuards
except ImportError:  # a torch without it: plans are found by their Python metadata key
    _TensorGuards = None


class PlanCache:
    """The eager fast paths' plans, found by a call's metadata (what _metadata holds).

    With torch's C++ tensor guard a lookup is a small key (SSM_BACKEND, the flags, each argument's
    type, so which tensors are absent) and one guard check over the present tensors per plan kept
    under it (~1 us for nine tensors, where building and hashing the Python metadata key costs
    ~5 us); the guard is at least as strict as that key. Without it, the Python key. At most
    MAX_PER_KEY plans a small key (the last used first), so a lookup stays short when shapes keep
    changing. The guard never matches a call that passes one tensor twice (its aliasing check):
    such calls take the checked path."""

    MAX_PER_KEY = 8

    def __init__(self):
        self._plans: dict = {}

    def find(self, flags: tuple, tensors: tuple):
        """(signature, plan) as find_plan returns them."""
        if _TensorGuards is None:
            try:
                sig = _metadata(flags, tensors)
                return sig, self._plans.get(sig)
            except (AttributeError, TypeError):
                return None, None
        present = [t for t in tensors if t is not None]
        # which arguments are absent by their types (built in C; the guard checks each type too)
        key = (forced_backend_value(), flags, *map(type, tensors))
        try:
            entries = self._plans.get(key)
        except TypeError:  # an unhashable flag: the op's checks will say
            return None, None
        if entries:
            if entries[0][0].check(*present):  # (the plan used last)
                return (key, present), entries[0][1]
            for i in range(1, len(entries)):
                if entries[i][0].check(*present):
                    entries.insert(0, entries.pop(i))
                    return (key, present), entries[0][1]
        return (key, present), None

    def __setitem__(self, sig, plan) -> None:
        if _TensorGuards is None:
            self._plans[sig] = plan
            return
        key, present = sig
        try:
            guard = _TensorGuards(*present, dynamic_dims_sizes=[list(t.shape) for t in present],
                                  dynamic_dims_strides=[list(t.stride()) for t in present])
        except (TypeError, AttributeError, RuntimeError):  # not all tensors: no plan to keep
            return
        entries = self._plans.setdefault(key, [])
        entries.insert(0, (guard, plan))
        del entries[self.MAX_PER_KEY:]

    def lookup(self, flags: tuple, tensors: tuple):
        """The plan kept for a call's metadata (None when none)."""
        return self.find(flags, tensors)[1]


def find_plan(plans: PlanCache, flags: tuple, tensors: tuple):
    """(signature, plan) of an eager call: the plan kept for its metadata (None when none yet), and
    what ``plans[signature] = plan`` takes to keep one; (None, None) when a flag is unhashable."""
    return plans.find(flags, tensors)


def ref_tails(modes: tuple, tensors: tuple) -> tuple:
    """What a plan keeps of refs(modes, tensors): each view without its data pointer (None stays
    None). A plan's key fixes every stride, so a planned call only adds the data pointers."""
    return tuple(None if r is None else r[1:] for r in refs(modes, tensors))


def planned_refs(tails: tuple, tensors: tuple) -> list:
    """The kernel-side views of a planned call: each tensor's data pointer before its planned strides."""
    return [None if tail is None else (t.data_ptr(),) + tail for tail, t in zip(tails, tensors)]


# Switch: False keeps every plan on its kernel's plain binding (one view tuple per tensor per call).
PREPARED = True


def prepare(backend: str, kernel: str, tails: tuple, arrange):
    """A plan's kernel call prepared once (CPU module, ssm/ops/cpu/bind/prepared.h): the binding
    builds and checks ``kernel(*arrange(views), nthreads)`` once, each view a tensor's tail (as
    ref_tails makes them, None for an absent tensor) after a marker pointer, and the returned
    callable takes the call's tensors in the order of tails (None where absent), then the thread
    count, and fills in their data pointers. None where there is no prepared form (the CUDA
    module, PREPARED off, a call the binding cannot prepare): the plan keeps the plain binding."""
    fn = getattr(module(backend), "prepare_" + kernel, None) if backend == "cpu" and PREPARED else None
    if fn is None:
        return None
    mod, views, slot = module(backend), [], 0
    for tail in tails:
        if tail is None:
            views.append(None)
            continue
        slot += 1
        views.append((mod.PREPARED_MARK_TAG + slot * mod.PREPARED_MARK_STEP,) + tail)
    try:
        return fn(slot, *arrange(views))
    except (TypeError, ValueError):  # (a build without PreparedCall, a struct it cannot prepare)
        return None


def planned_threads(work: int) -> int | None:
    """A plan's CPU thread count: 1 below PARALLEL_MIN_WORK, else None (torch's, read per call)."""
    return 1 if work < PARALLEL_MIN_WORK else None


def output_spec(x: torch.Tensor):
    """What a plan keeps to allocate an output of x's shape and dtype (see planned_output)."""
    return None if x.is_contiguous() else (tuple(x.shape), x.dtype, x.device)


def planned_output(x: torch.Tensor, spec) -> torch.Tensor:
    """empty() of x's shape and dtype in a planned call: empty_like(x) (the cheapest allocation)
    when the plan saw x contiguous (its key fixes x's strides), else new_empty(*spec)."""
    if spec is not None:
        return new_empty(*spec)
    t = torch.empty_like(x)
    if POISON_OUTPUTS:
        t.fill_(float("nan"))
    return t


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


# Below this many elements of work a CPU kernel runs on the calling thread: waking a pool worker
# costs 5-100 us (the more the busier the machine), more than such a call's whole work.
PARALLEL_MIN_WORK = 1 << 15


def cpu_threads(work: int) -> int:
    """The CPU thread count for a call with ``work`` elements of work (see exec_arg)."""
    return 1 if work < PARALLEL_MIN_WORK else torch.get_num_threads()


def exec_arg(backend: str, like: torch.Tensor, work: int | None = None) -> int:
    """The last argument of every kernel binding: the CPU thread count (torch's; 1 for calls
    under PARALLEL_MIN_WORK elements of ``work``, default ``like.numel()``), or the current CUDA
    stream of the tensor's device (so graph capture and streams work)."""
    if backend == "cpu":
        return 1 if (like.numel() if work is None else work) < PARALLEL_MIN_WORK else torch.get_num_threads()
    global _raw_stream
    if _raw_stream is not None:
        try:
            return _raw_stream(like.device.index)
        except (TypeError, RuntimeError):  # a build whose getter differs: the public form from now on
            _raw_stream = None
    return torch.cuda.current_stream(like.device).cuda_stream


# The current stream's handle by device index: torch's raw getter (what torch.compile's generated code
# calls), a C call where torch.cuda.current_stream(device) builds a Stream object (~25 us per eager
# conv fwd+bwd on the device's host, session 4); the public form where a build lacks it.
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


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


# The CUDA norm backwards write one partial dweight / dbias row per row block (ssm/ops/cuda/bind/norms.cpp).
CUDA_NORM_PARTS = 1024


def norm_parts(backend: str, rows: int, exec_value: int) -> int:
    """Rows of the norm backwards' partial dweight / dbias workspaces: one per CPU thread, or
    min(rows, CUDA_NORM_PARTS) on CUDA (at least 1)."""
    if backend == "cpu":
        return max(1, exec_value)
    return max(1, min(rows, CUDA_NORM_PARTS))


def small_param(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A small parameter (weight, bias, A, D) in ``dtype``, contiguous, for the fused paths: float32
    through float32_param (without autograd a copy kept per parameter, not one cast kernel per call;
    a plain cast when compiling), any other dtype by a plain cast."""
    if t is None:
        return None
    if dtype == torch.float32:
        return float32_contiguous(t) if torch.compiler.is_compiling() else float32_param(t)
    return t.to(dtype).contiguous()


def derived_param(t: torch.Tensor, tag, make) -> torch.Tensor:
    """make(t) for a small parameter t, without autograd: kept while t is alive and unchanged (as
    float32_param's copies; ``tag`` names the derivation), so that a fused op computes e.g. A = -exp(A_log)
    once per parameter update, not once per call. Computed per call under autograd for t, and for an
    inference tensor (no version counter)."""
    if (t.requires_grad and torch.is_grad_enabled()) or t.is_inference():
        return make(t)
    key = (t._version, t.data_ptr(), t.shape, t.stride(), t.dtype, t.device)
    ident = (id(t), tag)
    entry = _derived.get(ident)
    if entry is not None and entry[0]() is t and entry[1] == key:
        return entry[2]
    value = make(t.detach())
    _derived[ident] = (weakref.ref(t, lambda _, i=ident: _derived.pop(i, None)), key, value)
    return value


# derived_param's values: (id(t), tag) -> (weak reference to t, t's version key, value)
_derived: dict = {}
