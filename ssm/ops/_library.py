"""Glue between public ops and torch.library custom ops.

Every op is a ``torch.library`` custom op with a fake implementation, so ``torch.compile``
and ``torch.export`` see one opaque node. In eager mode the op's calls skip the dispatcher's
per-call cost: without autograd they run the implementation, with autograd an equivalent
``autograd.Function`` (:class:`EagerCustomOp`).
"""
from __future__ import annotations

import functools
from contextlib import contextmanager, nullcontext

import torch

_AUTOGRAD_KEYS = (
    torch._C.DispatchKey.ADInplaceOrView,
    torch._C.DispatchKey.AutogradCPU,
    torch._C.DispatchKey.AutogradCUDA,
    torch._C.DispatchKey.AutogradOther,
)


@contextmanager
def _autograd_inside_op():
    """Re-enable autograd inside a custom op's implementation (the dispatcher turns it off)."""
    include = torch._C._dispatch_tls_local_include_set()
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in _AUTOGRAD_KEYS:
        exclude = exclude.remove(key)
    with torch._C._ForceDispatchKeyGuard(include, exclude), torch.enable_grad():
        yield


def reference_vjp(fn, inputs: tuple, grad_outputs: tuple) -> tuple:
    """Gradients of ``fn(*inputs)`` (a tuple of outputs) for each tensor input that is
    floating point (None for the others), by running fn under autograd: the backward of the
    reference path and of any kernel that has no backward of its own yet."""
    with _autograd_inside_op():
        leaves = tuple(x.detach().requires_grad_() if _differentiable(x) else x for x in inputs)
        outputs = fn(*leaves)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs)
                 if g is not None and isinstance(o, torch.Tensor) and o.requires_grad]
        wrt = [x for x in leaves if _differentiable(x)]
        grads = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True) \
            if pairs and wrt else [None] * len(wrt)
    it = iter(grads)
    out = []
    for x in leaves:
        if _differentiable(x):
            g = next(it)
            out.append(torch.zeros_like(x) if g is None else g)
        else:
            out.append(None)
    return _unalias(out, inputs + grad_outputs)


def _unalias(outputs: list, inputs: tuple) -> tuple:
    """Custom ops may not return a tensor that shares storage with an input or another output."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
    result = []
    for t in outputs:
        if isinstance(t, torch.Tensor):
            if t.untyped_storage().data_ptr() in seen:
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
        result.append(t)
    return tuple(result)


def _differentiable(x) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def needs_autograd(*tensors) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def use_custom_op(*tensors) -> bool:
    """True when the call must go through the registered custom op (compiling, or autograd)."""
    return torch.compiler.is_compiling() or needs_autograd(*tensors)


def autocast_off(device_type: str):
    """A context with autocast off on ``device_type``; a no-op context when it is already off (entering
    torch.autocast costs host time on every call of a fused path)."""
    return torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else nullcontext()


def empty_if_none(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Custom ops cannot return None: absent outputs travel as empty tensors."""
    return like.new_empty(0) if t is None else t


def none_if_empty(t: torch.Tensor) -> torch.Tensor | None:
    return None if t.numel() == 0 else t


def custom_op(name: str, mutates_args=(), exact_layout: bool = False):
    """``torch.library.custom_op`` whose outputs are always contiguous, so that fake
    implementations (which allocate contiguous outputs with :func:`empty_like`) describe
    the real ones exactly, whatever path (kernel or reference) produced them. With
    ``exact_layout`` the outputs keep the implementation's strides (its fake gives the same
    ones on every path). Eager calls skip the dispatcher (see :class:`EagerCustomOp`)."""
    def register(fn):
        @functools.wraps(fn)
        def contiguous_outputs(*args, **kwargs):
            out = fn(*args, **kwargs)
            if exact_layout:
                return out
            if isinstance(out, torch.Tensor):
                return out.contiguous()
            if isinstance(out, (tuple, list)):
                return type(out)(o.contiguous() if isinstance(o, torch.Tensor) else o for o in out)
            return out
        schema = torch.library.infer_schema(fn, mutates_args=mutates_args)
        op = torch.library.custom_op(name, contiguous_outputs, mutates_args=mutates_args, schema=schema)
        return EagerCustomOp(name, op, contiguous_outputs)
    return register


# Switch: False sends every call through the registered custom ops (the dispatcher path).
EAGER_DIRECT = True


class EagerCustomOp:
    """A custom op whose eager calls skip the dispatcher and torch.library's autograd wrapper
    (about 100 us of Python per call): with autograd, an ``autograd.Function`` built from the
    op's own setup_context / backward runs the implementation; without, the implementation
    runs directly. Compiling, exporting, keyword arguments, or autograd on an op without a
    backward go through the registered op, as do the fake and autograd registrations."""

    def __init__(self, name: str, op, impl):
        self._name, self._op, self._impl, self._function = name, op, impl, None

    def __getattr__(self, name):
        return getattr(self._op, name)

    def register_fake(self, fn):
        return self._op.register_fake(fn)

    def register_autograd(self, backward, *, setup_context=None):
        self._op.register_autograd(backward, setup_context=setup_context)
        self._function = _eager_function(self._name, self._impl, backward, setup_context)

    def __call__(self, *args, **kwargs):
        if kwargs or not EAGER_DIRECT or torch.compiler.is_compiling():
            return self._op(*args, **kwargs)
        if not needs_autograd(*args):
            return self._impl(*args)
        if self._function is None:
            return self._op(*args)
        return self._function.apply(*args)


def _eager_function(name: str, impl, backward, setup_context):
    """The autograd.Function of an op's eager path: same forward, context and backward as the
    op's registered autograd (grads of absent outputs materialized as zeros, as there)."""
    def forward(ctx, *args):
        out = impl(*args)
        if setup_context is not None:
            setup_context(ctx=ctx, inputs=args, output=out)
        return out

    return type(f"Eager_{name.replace('::', '_')}", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)})


def empty_like(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A contiguous tensor of t's shape (for fake implementations)."""
    return torch.empty(t.shape, dtype=dtype or t.dtype, device=t.device)
