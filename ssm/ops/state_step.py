"""One decode step of the selective SSM, updating the cached state in place: Mamba-1 layout
(state (Bs, D, N), x (B, D)) and Mamba-2 layout (state (Bs, H, P, N), x (B, H, P)).
``mamba_ssm``'s ``selective_state_update`` and its reference are provided too.

No host synchronization anywhere, so the step can be captured in a CUDA graph."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ssm.ops import _checks, _kernels, _library
from ssm.ops.python import reference
from ssm.utils import dispatch


# ---- implementation --------------------------------------------------------------------------

def _as_heads(state, x, dt, A, B, C, D, z, dt_bias):
    """The Mamba-2 view of both layouts: Mamba-1 channels are heads of size P = 1."""
    if state.dim() == 4:
        return state, x, dt, A, B, C, D, z, dt_bias

    def col(t):
        return None if t is None else t.unsqueeze(-1)
    B = B.unsqueeze(1) if B.dim() == 2 else B
    C = C.unsqueeze(1) if C.dim() == 2 else C
    return state.unsqueeze(2), col(x), col(dt), A.unsqueeze(1), B, C, col(D), col(z), col(dt_bias)


def _float_params(*params):
    """Parameters in float32 for the kernel, keeping stride-0 (tied) dimensions broadcast."""
    out = []
    for t in params:
        if t is None or t.dtype == torch.float32:
            out.append(t)
            continue
        base = t[tuple(slice(0, 1) if s == 0 else slice(None) for s in t.stride())]
        out.append(base.float().expand(t.shape))
    return out


def _kernel_step(backend, state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices, softplus):
    # state (Bs, H, P, N); x, dt, z (B, H, P); A (H, P, N); B, C (B, G, N); D, dt_bias (H, P)
    state4, x4, dt, A, B, C, D, z, dt_bias = _as_heads(state, x, dt, A, B, C, D, z, dt_bias)
    A, D, dt_bias = _float_params(A, D, dt_bias)
    # Activations of mixed dtypes meet in float32 (decode-sized tensors: the casts are cheap).
    act = x.dtype if len({t.dtype for t in (x, dt, B, C, z) if t is not None}) == 1 else torch.float32
    x4, dt, B, C, z = (t if t is None or t.dtype == act else t.to(act) for t in (x4, dt, B, C, z))
    batch, H, P = x4.shape
    out = _kernels.empty(x4.shape, x4)
    idx = None if state_batch_indices is None else state_batch_indices.to(torch.int32)
    r = _kernels.ref
    _kernels.module(backend).selective_state_step(
        _kernels.dtype_code(state), _kernels.dtype_code(x4), batch, H, P, A.shape[-1], B.shape[1], r(state4),
        r(x4), r(dt), r(A), r(B), r(C), r(D), r(z), r(dt_bias), r(idx), r(out), softplus,
        _kernels.exec_arg(backend, x, work=x4.numel() * A.shape[-1]))
    out = out if out.dtype == x.dtype else out.to(x.dtype)
    return out.squeeze(-1) if state.dim() == 3 else out


def _step_impl(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices, softplus):
    # An empty batch has no work for a kernel (and no data pointer to give it).
    backend = "reference" if x.numel() == 0 or state.numel() == 0 else dispatch.select_backend(
        "selective_state_step", state.device,
        lambda b: _kernels.kernel_reason(b, "selective_state_step", state, x, dt, B, C, z))
    if backend == "reference":
        return reference.selective_state_step(state, x, dt, A, B, C, D, z, dt_bias, softplus,
                                              state_batch_indices=state_batch_indices)
    return _kernel_step(backend, state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices, softplus)


@_library.custom_op("ssm::selective_state_step", mutates_args=("state",))
def _step_op(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
             z: Optional[Tensor], dt_bias: Optional[Tensor], state_batch_indices: Optional[Tensor],
             softplus: bool) -> Tensor:
    return _step_impl(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices, softplus)


@_step_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices, softplus):
    return _library.empty_like(x)


# ---- eager fast path ---------------------------------------------------------------------------
# Whatever the arguments' metadata (type, shape, strides, dtype, device: all the checks look at)
# decides is kept per signature once a call passed the checks: validation, the backend, the
# kernel's sizes and each argument's kernel-side strides in the (B, H, P, N) layout. A repeated
# decode call then costs its metadata key, the data pointers, one output allocation and the kernel.

_plans = _kernels.PlanCache()


def _arg_modes(state, x, dt, A, B, D, dt_bias):
    """How each of state, x, dt, A, B, C, D, z, dt_bias reaches the kernel's (B, H, P, N) layout:
    the views of _as_heads and _broadcast_heads, made as strides (see _kernels.refs)."""
    k = _kernels
    if state.dim() == 3:  # Mamba-1: channels are heads of size 1
        bc = k.UNIT_MID if B.dim() == 2 else k.AS_IS
        return (k.UNIT_MID, k.UNIT_LAST, k.UNIT_LAST, k.UNIT_MID, bc, bc, k.UNIT_LAST, k.UNIT_LAST, k.UNIT_LAST)

    def head(t, mode):
        return mode if t is not None and t.dim() == 1 else k.AS_IS
    return (k.AS_IS, k.AS_IS, k.UNIT_LAST if dt.dim() == 2 else k.AS_IS, head(A, k.UNIT_HEAD), k.AS_IS,
            k.AS_IS, head(D, k.UNIT_LAST), k.AS_IS, head(dt_bias, k.UNIT_LAST))


def _float32_params(params, convert):
    """A, D, dt_bias as the plan takes them: the ones it converts as cached float32 copies."""
    return [_kernels.float32_param(t) if c else t for t, c in zip(params, convert)]


def _make_plan(state, x, dt, A, B, C, D, z, dt_bias, idx, softplus):
    """The plan of a call that passed the checks, or False when it takes the general path
    (the reference, mixed activation dtypes, int64 indices, an empty batch)."""
    if x.numel() == 0 or state.numel() == 0 or (idx is not None and idx.dtype != torch.int32):
        return False
    if len({t.dtype for t in (x, dt, B, C, z) if t is not None}) != 1:
        return False
    backend = dispatch.select_backend(
        "selective_state_step", state.device,
        lambda b: _kernels.kernel_reason(b, "selective_state_step", state, x, dt, B, C, z))
    if backend == "reference":
        return False
    k = _kernels
    H, P = (x.shape[1], 1) if state.dim() == 3 else x.shape[1:]
    sizes = (x.shape[0], H, P, state.shape[-1], 1 if B.dim() == 2 else B.shape[1])
    convert = tuple(t is not None and t.dtype != torch.float32 for t in (A, D, dt_bias))
    A, D, dt_bias = _float32_params((A, D, dt_bias), convert)
    modes = _arg_modes(state, x, dt, A, B, D, dt_bias) + (k.AS_IS, k.UNIT_LAST if state.dim() == 3 else k.AS_IS)
    tails = k.ref_tails(modes, (state, x, dt, A, B, C, D, z, dt_bias, idx, k.empty(x.shape, x)))
    head, work = (k.dtype_code(state), k.dtype_code(x), *sizes), x.numel() * state.shape[-1]
    prepared = k.prepare(backend, "selective_state_step", tails, lambda v: (*head, *v, bool(softplus)))
    return (backend, k.module(backend).selective_state_step, head, tails, convert if any(convert) else None,
            k.output_spec(x), work, prepared, k.planned_threads(work))


def _run_plan(plan, state, x, dt, A, B, C, D, z, dt_bias, idx, softplus):
    backend, kernel, head, tails, convert, out_like, work, prepared, threads = plan
    if convert:
        A, D, dt_bias = _float32_params((A, D, dt_bias), convert)
    out = _kernels.planned_output(x, out_like)
    if prepared is not None:  # (the plan's key holds softplus)
        prepared(state, x, dt, A, B, C, D, z, dt_bias, idx, out, threads or torch.get_num_threads())
        return out
    kernel(*head, *_kernels.planned_refs(tails, (state, x, dt, A, B, C, D, z, dt_bias, idx, out)), softplus,
           _kernels.cpu_threads(work) if backend == "cpu" else _kernels.exec_arg(backend, x))
    return out


# ---- public ----------------------------------------------------------------------------------

def _check_mamba1(state, x, dt, A, B, C, D, z, dt_bias):
    batch, dim = x.shape
    N = state.shape[2]
    dev = state.device
    _checks.tensor("state", state, shape=(None, dim, N), device=dev)
    _checks.tensor("dt", dt, shape=(batch, dim), device=dev)
    _checks.tensor("A", A, shape=(dim, N), device=dev)
    for name, t in (("B", B), ("C", C)):
        _checks.tensor(name, t, ndim=(2, 3), device=dev)
        _checks.tensor(name, t, shape=(batch, N) if t.dim() == 2 else (batch, None, N))
        if t.dim() == 3 and (t.shape[1] < 1 or dim % t.shape[1]):
            raise ValueError(f"{name}: expected a group count dividing the {dim} channels, got {tuple(t.shape)}")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        _checks.tensor(name, t, shape=(dim,), device=dev, optional=True)
    _checks.tensor("z", z, shape=(batch, dim), device=dev, optional=True)


def _check_mamba2(state, x, dt, A, B, C, D, z, dt_bias):
    batch, H, P = x.shape
    N = state.shape[3]
    dev = state.device
    _checks.tensor("state", state, shape=(None, H, P, N), device=dev)
    _checks.tensor("dt", dt, shape=(batch, H, P), device=dev)
    _checks.tensor("A", A, shape=(H, P, N), device=dev)
    for name, t in (("B", B), ("C", C)):
        _checks.tensor(name, t, shape=(batch, None, N), device=dev)
        if t.shape[1] < 1 or H % t.shape[1]:
            raise ValueError(f"{name}: expected a group count dividing the {H} heads, got {tuple(t.shape)}")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        _checks.tensor(name, t, shape=(H, P), device=dev, optional=True)
    _checks.tensor("z", z, shape=(batch, H, P), device=dev, optional=True)


def _broadcast_heads(state, x, dt, A, D, dt_bias):
    """Mamba-2 per-head forms (dt (B, H), A (H,), D and dt_bias (H,)) as stride-0 views."""
    if x.dim() != 3 or state.dim() != 4:
        return dt, A, D, dt_bias
    batch, H, P = x.shape
    if isinstance(dt, Tensor) and dt.dim() == 2:
        dt = dt[:, :, None].expand(batch, H, P)
    if isinstance(A, Tensor) and A.dim() == 1:
        A = A[:, None, None].expand(H, P, state.shape[-1])
    if isinstance(D, Tensor) and D.dim() == 1:
        D = D[:, None].expand(H, P)
    if isinstance(dt_bias, Tensor) and dt_bias.dim() == 1:
        dt_bias = dt_bias[:, None].expand(H, P)
    return dt, A, D, dt_bias


def _check_step_args(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices):
    # state's rank was checked by the caller; dt, A, B, C are checked in full (type first) by the layout's check
    _checks.tensor("x", x, ndim=state.dim() - 1, device=state.device)
    (_check_mamba1 if state.dim() == 3 else _check_mamba2)(state, x, dt, A, B, C, D, z, dt_bias)
    if state_batch_indices is None:
        if state.shape[0] != x.shape[0]:
            raise ValueError(f"state: expected batch {x.shape[0]} to match x without state_batch_indices, "
                             f"got shape {tuple(state.shape)}")
    else:
        _checks.tensor("state_batch_indices", state_batch_indices, shape=(x.shape[0],), dtypes=_checks.INT_DTYPES,
                       device=state.device)


def selective_state_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                         D: Optional[Tensor] = None, z: Optional[Tensor] = None, dt_bias: Optional[Tensor] = None,
                         softplus: bool = True, *, state_batch_indices: Optional[Tensor] = None) -> Tensor:
    """One token of the selective SSM; ``state`` is updated in place, in its own dtype.

    Mamba-1: state (Bs, D, N), x, dt, z (B, D), A (D, N), B, C (B, N) or (B, G, N), D, dt_bias (D,).
    Mamba-2: state (Bs, H, P, N), x, dt, z (B, H, P), A (H, P, N), B, C (B, G, N), D, dt_bias (H, P);
    per-head forms dt (B, H), A (H,), D, dt_bias (H,) are accepted (tied: read once per head).
    dt <- softplus(dt + dt_bias) when ``softplus``; state <- exp(dt A) state + dt x B;
    y = C . state + D x, times silu(z). ``state_batch_indices`` (B,) picks the state row of each
    batch element; a negative index marks padding (y = 0, no state touched). Returns y like x.
    """
    compiling = torch.compiler.is_compiling()
    sig, plan = (None, None) if compiling else _plans.find(
        (bool(softplus),), (state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices))
    if plan:
        return _run_plan(plan, state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices, softplus)
    _checks.tensor("state", state, ndim=(3, 4))
    _checks.tensor("x", x, ndim=(2, 3))
    dt_h, A_h, D_h, dt_bias_h = dt, A, D, dt_bias
    dt, A, D, dt_bias = _broadcast_heads(state, x, dt, A, D, dt_bias)
    _check_step_args(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices)
    args = (state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices, softplus)
    if compiling:
        return _step_op(*args)
    if sig is not None:
        _plans[sig] = _make_plan(state, x, dt_h, A_h, B, C, D_h, z, dt_bias_h, state_batch_indices, softplus)
    return _step_impl(*args)


def selective_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Optional[Tensor] = None, z: Optional[Tensor] = None, dt_bias: Optional[Tensor] = None,
                           dt_softplus: bool = False, state_batch_indices: Optional[Tensor] = None) -> Tensor:
    """``mamba_ssm``'s ``selective_state_update`` (see :func:`selective_state_step`)."""
    return selective_state_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                                state_batch_indices=state_batch_indices)


def selective_state_update_ref(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                               D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                               dt_bias: Optional[Tensor] = None, dt_softplus: bool = False,
                               state_batch_indices: Optional[Tensor] = None) -> Tensor:
    """The pure PyTorch reference of :func:`selective_state_update`."""
    dt, A, D, dt_bias = _broadcast_heads(state, x, dt, A, D, dt_bias)
    return reference.selective_state_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                                          state_batch_indices=state_batch_indices)
