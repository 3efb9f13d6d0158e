"""Mamba-1 selective scan, forward and backward, with varlen (seq_idx / cu_seqlens), initial and
last states. Names of ``mamba_ssm`` (``selective_scan_fn``, ``selective_scan_ref``) are provided too."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ssm.ops import _checks, _kernels, _library
from ssm.ops.python import reference
from ssm.utils import dispatch

# Channels one vector of the CPU kernel holds; slices of a group are whole vectors.
_LANES = 8


# ---- kernel-side helpers ---------------------------------------------------------------------

def _layout(u: Tensor, B: Tensor, C: Tensor, nthreads: int):
    """(ngroups, nslices): the kernel's tasks are (batch, group, slice of the group's channels)."""
    batch, dim, _ = u.shape
    groups = B.shape[1] if B.dim() == 4 else C.shape[1] if C.dim() == 4 else 1
    vecs = -(-(dim // groups) // _LANES)
    slices = max(1, min(vecs, -(-2 * nthreads // (batch * groups))))
    return groups, slices


def _int32(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.to(torch.int32).contiguous()


def _nrows(u: Tensor, cu_seqlens: Optional[Tensor]) -> int:
    """Rows of initial/last states: one per sequence with cu_seqlens, else one per batch."""
    return u.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


# ---- forward ---------------------------------------------------------------------------------

def _reason(backend, kernel, u, delta, B, C, z, N=None):
    reason = _kernels.kernel_reason(backend, kernel, u, delta, B if B.dim() == 4 else None,
                                    C if C.dim() == 4 else None, z)
    if reason is None and backend == "cuda":
        reason = _cuda_limit(kernel, N)
    return reason


def _cuda_limit(kernel: str, N: Optional[int]) -> Optional[str]:
    """Sizes the CUDA kernels do not take: N > 256."""
    if N is not None and N > 256:
        return f"the CUDA {kernel} kernel takes N <= 256, got {N}"
    return None


# Steps per chunk of the CUDA backwards; longer sequences need a (B, D, nchunks, N) float32
# workspace of the states at chunk starts. The thread-per-channel kernel (selective_scan_bwd_thread.cuh:
# N <= 16, variable B and C, no seq_idx / cu_seqlens) takes chunks of 16 steps and its workspace
# with D fastest (how the kernel tells it apart); the warp kernel (selective_scan_bwd.cuh) 256.
_CUDA_BWD_CHUNK, _CUDA_THREAD_BWD_CHUNK = 256, 16


def _thread_bwd(u: Tensor, N: int, B: Tensor, C: Tensor, initial_state, seq_idx, cu_seqlens) -> bool:
    # the thread kernel steps through L, D and the initial state's N with 32-bit offsets
    small = u.shape[1] < 2**26 and u.shape[2] < 2**26 and (initial_state is None or
                                                            abs(initial_state.stride(2)) < 2**26)
    return N <= 16 and B.dim() == 4 and C.dim() == 4 and seq_idx is None and cu_seqlens is None and small


def _chunk_states(backend: str, u: Tensor, N: int, thread: bool) -> Optional[Tensor]:
    batch, dim, L = u.shape
    chunk = _CUDA_THREAD_BWD_CHUNK if thread else _CUDA_BWD_CHUNK
    nchunks = -(-L // chunk)
    if backend != "cuda" or nchunks <= 1:
        return None
    if thread:
        # (B, D, nchunks, N) with D fastest
        return _kernels.empty((batch, nchunks, N, dim), u, torch.float32).permute(0, 3, 1, 2)
    return _kernels.empty((batch, dim, nchunks, N), u, torch.float32)


def _rows_like(t: Tensor, like: Tensor) -> Tensor:
    """A (B, D, L) kernel buffer of like's dtype and t's layout when t is channels-last (stride 1 along
    D, as the Mamba-1 projections give), else contiguous: the kernels' outputs and gradients keep
    their input's layout (the custom ops still return contiguous tensors; the fused Mamba-1 path
    calls the implementations directly and keeps these layouts)."""
    batch, dim, L = t.shape
    if _channels_last(t):
        return _kernels.empty((batch, L, dim), like).transpose(1, 2)
    return _kernels.empty((batch, dim, L), like)


def _channels_last(t: Tensor) -> bool:
    batch, dim, L = t.shape
    return dim > 1 and L > 1 and t.stride(1) == 1 and t.stride(2) == dim and t.stride(0) == dim * L


def _fwd_impl(u, delta, A, B, C, D, z, dt_bias, initial_state, seq_idx, cu_seqlens, softplus, return_last_state,
              checkpoints=False):
    # u, delta, z (B, D, L); A (D, N); B/C (D, N) or (B, G, N, L); initial/last (rows, D, N) float32;
    # with checkpoints also the backward's chunk-start states as their (B, nchunks, N, D) buffer (or empty)
    y, last, chunk_states = _fwd_run(u, delta, A, B, C, D, z, dt_bias, initial_state, seq_idx, cu_seqlens,
                                     softplus, return_last_state, checkpoints)
    return y, last, _library.empty_if_none(None if chunk_states is None else chunk_states.permute(0, 2, 3, 1), u)


def _fwd_run(u, delta, A, B, C, D, z, dt_bias, initial_state, seq_idx, cu_seqlens, softplus, return_last_state,
             checkpoints=False):
    """(y, last, chunk_states): with checkpoints, the CUDA thread kernel also writes the backward's
    chunk-start states, handed to _bwd_impl (None where no kernel writes them)."""
    # An empty input has no work for a kernel (and no data pointer to give it).
    backend = "reference" if u.numel() == 0 else dispatch.select_backend(
        "selective_scan", u.device, lambda b: _reason(b, "selective_scan_fwd", u, delta, B, C, z, A.shape[1]))
    if backend == "reference":
        out = reference.selective_scan(u, delta, A, B, C, D, z, dt_bias, softplus, return_last_state,
                                       initial_state=initial_state, seq_idx=seq_idx, cu_seqlens=cu_seqlens)
        y, last = out if return_last_state else (out, None)
        return y, _library.empty_if_none(last, u), None
    batch, dim, L = u.shape
    N = A.shape[1]
    nthreads = _kernels.exec_arg(backend, u, work=u.numel() * N)
    groups, slices = _layout(u, B, C, nthreads if backend == "cpu" else 1)
    y = _rows_like(delta, u)
    last = _kernels.empty((_nrows(u, cu_seqlens), dim, N), u, torch.float32) if return_last_state else None
    thread = _thread_bwd(u, N, B, C, initial_state, seq_idx, cu_seqlens)
    chunk_states = _chunk_states(backend, u, N, thread) if checkpoints and thread else None
    seq_idx, cu_seqlens = _int32(seq_idx), _int32(cu_seqlens)
    r = _kernels.ref
    _kernels.module(backend).selective_scan_fwd(
        _kernels.dtype_code(u), batch, dim, L, N, groups, slices, r(u), r(delta), r(A), r(B), r(C), r(D), r(z),
        r(dt_bias), r(initial_state), r(seq_idx), r(cu_seqlens), _nrows(u, cu_seqlens), r(y), r(last),
        r(chunk_states), softplus, nthreads)
    return y, _library.empty_if_none(last, u), chunk_states


@_library.custom_op("ssm::selective_scan_fwd", mutates_args=())
def _fwd_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
            dt_bias: Optional[Tensor], initial_state: Optional[Tensor], seq_idx: Optional[Tensor],
            cu_seqlens: Optional[Tensor], softplus: bool, return_last_state: bool,
            checkpoints: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _fwd_impl(u, delta, A, B, C, D, z, dt_bias, initial_state, seq_idx, cu_seqlens, softplus,
                     return_last_state, checkpoints)


@_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, dt_bias, initial_state, seq_idx, cu_seqlens, softplus, return_last_state,
      checkpoints):
    shape = (_nrows(u, cu_seqlens), u.shape[1], A.shape[1]) if return_last_state else (0,)
    # checkpoints are asked for in eager calls only (the compiled backward computes its own)
    return (_library.empty_like(u), u.new_empty(shape, dtype=A.dtype if A.dtype == torch.float64 else torch.float32),
            u.new_empty(0))


# ---- backward --------------------------------------------------------------------------------

def _bwd_reference(u, delta, A, B, C, D, z, dt_bias, initial_state, seq_idx, cu_seqlens, dy, dlast, softplus,
                   return_last_state):
    def forward(u, delta, A, B, C, D, z, dt_bias, initial_state):
        out = reference.selective_scan(u, delta, A, B, C, D, z, dt_bias, softplus, return_last_state,
                                       initial_state=initial_state, seq_idx=seq_idx, cu_seqlens=cu_seqlens)
        return out if return_last_state else (out,)
    grads = _library.reference_vjp(forward, (u, delta, A, B, C, D, z, dt_bias, initial_state),
                                   (dy, dlast if return_last_state and dlast.numel() else None))
    return tuple(_library.empty_if_none(g, u) for g in grads)


def _bwd_kernel(backend, u, delta, A, B, C, D, z, dt_bias, initial_state, seq_idx, cu_seqlens, dy, dlast,
                softplus, chunk_states=None, dz_out=None):
    # Per-slice / per-batch float32 partial sums, reduced here: dA, dD, ddt_bias (B, D[, N]);
    # variable dB/dC (S, B, G, N, L); constant dB/dC (B, D, N). dz_out: a buffer for dz (or None).
    batch, dim, L = u.shape
    N = A.shape[1]
    nthreads = _kernels.exec_arg(backend, u, work=u.numel() * N)
    groups, slices = _layout(u, B, C, nthreads if backend == "cpu" else 1)
    f32 = torch.float32
    du, ddelta = _rows_like(u, u), _rows_like(delta, u)
    dz = None if z is None else _rows_like(z, u) if dz_out is None else dz_out
    dA = _kernels.empty((batch, dim, N), u, f32)
    dD = None if D is None else _kernels.empty((batch, dim), u, f32)
    ddt_bias = None if dt_bias is None else _kernels.empty((batch, dim), u, f32)
    dB = _kernels.empty((slices, *B.shape) if B.dim() == 4 else (batch, dim, N), u, f32)
    dC = _kernels.empty((slices, *C.shape) if C.dim() == 4 else (batch, dim, N), u, f32)
    dinit = None if initial_state is None else _kernels.empty(initial_state.shape, u, f32)
    dlast = dlast if dlast.numel() else None
    filled = chunk_states is not None
    if not filled:
        chunk_states = _chunk_states(backend, u, N, _thread_bwd(u, N, B, C, initial_state, seq_idx, cu_seqlens))
    r = _kernels.ref
    _kernels.module(backend).selective_scan_bwd(
        _kernels.dtype_code(u), batch, dim, L, N, groups, slices, r(u), r(delta), r(A), r(B), r(C), r(D), r(z),
        r(dt_bias), r(initial_state), r(seq_idx), r(cu_seqlens), _nrows(u, cu_seqlens), r(dy),
        r(dlast), r(du), r(ddelta), r(dA), r(_slices_as_rows(dB)), r(_slices_as_rows(dC)), r(dD), r(dz),
        r(ddt_bias), r(dinit), r(chunk_states), filled, softplus, nthreads)
    grads = (du, ddelta, _sum0(dA), _sum0(dB).to(B.dtype), _sum0(dC).to(C.dtype), _sum0(dD), dz, _sum0(ddt_bias),
             dinit)
    return tuple(_library.empty_if_none(g, u) for g in grads)


def _sum0(t: Optional[Tensor]) -> Optional[Tensor]:
    """A partial-sum workspace summed over its first dimension (no reduction kernel when it has one row:
    the CUDA kernels' variable dB / dC)."""
    return None if t is None else t[0] if t.shape[0] == 1 else t.sum(0)


def _slices_as_rows(t: Tensor) -> Tensor:
    """A per-slice (S, B, G, N, L) workspace as the kernel's 4-d (S*B, G, N, L)."""
    return t.flatten(0, 1) if t.dim() == 5 else t


def _bwd_impl(u, delta, A, B, C, D, z, dt_bias, initial_state, seq_idx, cu_seqlens, dy, dlast, softplus,
              return_last_state, chunk_states=None, dz_out=None):
    """Gradients; chunk_states: the checkpoints _fwd_run wrote for these inputs (None: computed here);
    dz_out: a (B, D, L) buffer the kernels write dz into (the reference path returns its own)."""
    backend = "reference" if u.numel() == 0 else dispatch.select_backend(
        "selective_scan_bwd", u.device, lambda b: _reason(b, "selective_scan_bwd", u, delta, B, C, z, A.shape[1]))
    if backend == "reference":
        return _bwd_reference(u, delta, A, B, C, D, z, dt_bias, initial_state, seq_idx, cu_seqlens, dy, dlast,
                              softplus, return_last_state)
    return _bwd_kernel(backend, u, delta, A, B, C, D, z, dt_bias, initial_state, _int32(seq_idx),
                       _int32(cu_seqlens), dy, dlast, softplus, chunk_states if backend == "cuda" else None, dz_out)


@_library.custom_op("ssm::selective_scan_bwd", mutates_args=())
def _bwd_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
            dt_bias: Optional[Tensor], initial_state: Optional[Tensor], seq_idx: Optional[Tensor],
            cu_seqlens: Optional[Tensor], dy: Tensor, dlast: Tensor, chunk_states: Tensor, softplus: bool,
            return_last_state: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    # chunk_states: the forward's (B, nchunks, N, D) checkpoint buffer, or empty
    ck = chunk_states.permute(0, 3, 1, 2) if chunk_states.numel() else None
    return _bwd_impl(u, delta, A, B, C, D, z, dt_bias, initial_state, seq_idx, cu_seqlens, dy, dlast, softplus,
                     return_last_state, ck)


@_bwd_op.register_fake
def _(u, delta, A, B, C, D, z, dt_bias, initial_state, seq_idx, cu_seqlens, dy, dlast, chunk_states, softplus,
      return_last_state):
    def like(t):
        return u.new_empty(0) if t is None else _library.empty_like(t)
    return (like(u), like(delta), like(A), like(B), like(C), like(D), like(z), like(dt_bias), like(initial_state))


def _setup_context(ctx, inputs, output):
    *tensors, softplus, return_last_state, _ = inputs
    ctx.save_for_backward(*tensors, output[2])
    ctx.flags = (softplus, return_last_state)
    # the checkpoints have no gradient; no zero gradients materialized for them (or for unused outputs)
    ctx.mark_non_differentiable(output[2])
    ctx.set_materialize_grads(False)


def _backward(ctx, dy, dlast, _):
    *tensors, chunk_states = ctx.saved_tensors
    u = tensors[0]
    dy = torch.zeros_like(u) if dy is None else dy
    dlast = u.new_empty(0) if dlast is None else dlast
    grads = _bwd_op(*tensors, dy, dlast, chunk_states, *ctx.flags)
    # Inputs: u, delta, A, B, C, D, z, dt_bias, initial_state, seq_idx, cu_seqlens, softplus, 2 flags.
    present = [t is not None for t in tensors[:9]]
    return (*(g if p else None for g, p in zip(grads, present)), None, None, None, None, None)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# Switch: False leaves the checkpoints to the backward's own forward pass, as compiled graphs do (session 5
# round 1, H200: fwd+bwd 3.00 ms event with the forward's checkpoints, 3.34 ms with the pre-pass).
FWD_CHECKPOINTS = True


# ---- public ----------------------------------------------------------------------------------

def _check_bc(name: str, t, batch: int, dim: int, N: int, L: int, device) -> None:
    _checks.tensor(name, t, ndim=(2, 3, 4), device=device)
    if t.dim() == 2:
        _checks.tensor(name, t, shape=(dim, N))
    elif t.dim() == 3:
        _checks.tensor(name, t, shape=(batch, N, L))
    else:
        _checks.tensor(name, t, shape=(batch, None, N, L))
        G = t.shape[1]
        if G < 1 or dim % G != 0:
            raise ValueError(f"{name}: expected a group count dividing the {dim} channels, got shape {tuple(t.shape)}")


def _check_scan_args(u, delta, A, B, C, D, z, dt_bias, initial_state, seq_idx, cu_seqlens):
    _checks.tensor("u", u, ndim=3)
    batch, dim, L = u.shape
    dev = u.device
    _checks.tensor("delta", delta, shape=(batch, dim, L), device=dev)
    if isinstance(A, Tensor) and A.is_complex():
        raise TypeError(f"A: complex A is not supported, got dtype {A.dtype}")
    _checks.tensor("A", A, shape=(dim, None), device=dev)
    N = A.shape[1]
    _check_bc("B", B, batch, dim, N, L, dev)
    _check_bc("C", C, batch, dim, N, L, dev)
    if B.dim() == 4 and C.dim() == 4 and B.shape[1] != C.shape[1]:
        raise ValueError(f"C: expected the group count of B ({B.shape[1]}), got shape {tuple(C.shape)}")
    _checks.tensor("D", D, shape=(dim,), device=dev, optional=True)
    _checks.tensor("z", z, shape=(batch, dim, L), device=dev, optional=True)
    _checks.tensor("dt_bias", dt_bias, shape=(dim,), device=dev, optional=True)
    _checks.seq_idx(seq_idx, batch, L, dev)
    _checks.cu_seqlens(cu_seqlens, L, dev, batch)
    if seq_idx is not None and cu_seqlens is not None:
        raise ValueError("cu_seqlens: pass either seq_idx or cu_seqlens, not both")
    _checks.tensor("initial_state", initial_state, shape=(_nrows(u, cu_seqlens), dim, N), device=dev,
                   optional=True)


def _prepare(u, delta, A, B, C, D, z, dt_bias, initial_state):
    """Activations (u, delta, z, variable B/C) in one dtype; parameters, constant B/C and the
    initial state in float32 (float64 when the activations are)."""
    acts = [t for t in (u, delta, z, B if B.dim() > 2 else None, C if C.dim() > 2 else None) if t is not None]
    act = acts[0].dtype
    for t in acts[1:]:
        if t.dtype != act:
            act = torch.promote_types(act, t.dtype)
    par = torch.float64 if act == torch.float64 else torch.float32

    def cast(t, var):  # (a dtype test is cheaper than a no-op .to() through the dispatcher)
        if t is None:
            return None
        want = act if var else par
        return t if t.dtype == want else t.to(want)
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    return (cast(u, True), cast(delta, True), cast(A, False), cast(B, B.dim() == 4), cast(C, C.dim() == 4),
            cast(D, False), cast(z, True), cast(dt_bias, False), cast(initial_state, False))


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None, dt_bias: Optional[Tensor] = None, softplus: bool = False,
                   return_last_state: bool = False, *, initial_state: Optional[Tensor] = None,
                   seq_idx: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None):
    """Mamba-1 selective scan: u, delta (B, D, L); A (D, N); B, C (D, N) constant or (B, N, L) /
    (B, G, N, L) per token; D, dt_bias (D,); z (B, D, L).

    dt = softplus(delta + dt_bias) (softplus only when asked); h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t;
    y_t = C_t . h_t + D u_t, times silu(z_t) when z is given; float32 compute, y in u's dtype.
    ``seq_idx`` (B, L) resets the state where it changes; ``cu_seqlens`` (nseq+1,) packs sequences
    in a batch of 1, and then ``initial_state`` and the last state are per sequence (nseq, D, N).
    With ``return_last_state`` returns (y, last_state float32).
    """
    _check_scan_args(u, delta, A, B, C, D, z, dt_bias, initial_state, seq_idx, cu_seqlens)
    args = _prepare(u, delta, A, B, C, D, z, dt_bias, initial_state)
    compiling, grad = torch.compiler.is_compiling(), _library.needs_autograd(*args)
    if compiling or grad:
        # eager autograd: the forward also writes the backward's checkpoints (CUDA, N <= 16: the states
        # before every 16 steps, float32, twice the bytes of a bf16 u), sparing the backward a forward pass
        ck = FWD_CHECKPOINTS and grad and not compiling
        y, last, _ = _fwd_op(*args, seq_idx, cu_seqlens, softplus, return_last_state, ck)
    else:
        y, last, _ = _fwd_impl(*args, seq_idx, cu_seqlens, softplus, return_last_state)
    y = y.to(u.dtype)
    return (y, last) if return_last_state else y


def selective_scan_fn(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                      z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                      return_last_state: bool = False, *, initial_state: Optional[Tensor] = None,
                      seq_idx: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None):
    """``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (see :func:`selective_scan`)."""
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                          initial_state=initial_state, seq_idx=seq_idx, cu_seqlens=cu_seqlens)


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                       z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                       return_last_state: bool = False, *, initial_state: Optional[Tensor] = None,
                       seq_idx: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None):
    """``mamba_ssm``'s ``selective_scan_ref``: the pure PyTorch reference, same signature."""
    return reference.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                    initial_state=initial_state, seq_idx=seq_idx, cu_seqlens=cu_seqlens)
