"""Mamba-2 SSD chunked scan (``ssd_chunk_scan``), forward and backward, and the names of
``mamba_ssm`` built on it (``mamba_chunk_scan_combined`` and the reference compositions).

Per head h, with Δ_t = clamp(softplus?(dt_t + dt_bias), dt_limit) and state H (P, N):
H_t = exp(Δ_t A) H_{t-1} + Δ_t x_t ⊗ B_t,  y_t = H_t C_t + D x_t,  y *= silu(z) when z is given.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from ssm.ops import _checks, _kernels, _library, ssd_bwd
from ssm.ops.python import reference
from ssm.utils import dispatch

_INF = float("inf")


# ---- forward ---------------------------------------------------------------------------------

def _reference_forward(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, chunk_size,
                       dt_softplus, dt_lo, dt_hi, return_final, return_varlen):
    """The reference forward as a tuple (y, final_states or None, varlen_states or None)."""
    out = reference.ssd_chunk_scan(x, dt, A, B, C, chunk_size, D=D, z=z, initial_states=initial_states,
                                   dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=(dt_lo, dt_hi),
                                   seq_idx=seq_idx, cu_seqlens=cu_seqlens, return_final_states=return_final,
                                   return_varlen_states=return_varlen)
    out = list(out) if isinstance(out, tuple) else [out]
    y = out.pop(0)
    final = out.pop(0) if return_final else None
    varlen = out.pop(0) if return_varlen else None
    return y, final, varlen


def _fwd_impl(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
              dt_bias: Optional[Tensor], initial_states: Optional[Tensor], seq_idx: Optional[Tensor],
              cu_seqlens: Optional[Tensor], chunk_size: int, dt_softplus: bool, dt_lo: float, dt_hi: float,
              return_final: bool, return_varlen: bool):
    # x (B, L, H, P); dt (B, L, H); A (H,); B, C (B, L, G, N); D (H, P); z like x; dt_bias (H,)
    backend = dispatch.select_backend("ssd_chunk_scan", x.device,
                                      lambda b: _kernel_reason(b, "ssd_chunk_scan_fwd", x, B, C, z))
    if backend == "reference":
        y, final, varlen = _reference_forward(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens,
                                              chunk_size, dt_softplus, dt_lo, dt_hi, return_final, return_varlen)
        return (y.contiguous(), _library.empty_if_none(final, x), _library.empty_if_none(varlen, x))
    batch, L, H, P = x.shape
    N = B.shape[-1]
    nseq = 0 if cu_seqlens is None else cu_seqlens.shape[0] - 1
    seq_idx, cu_seqlens = _int32(seq_idx), _int32(cu_seqlens)
    y = _kernels.empty((batch, L, H, P), x)
    final = _kernels.empty((batch, H, P, N), x, torch.float32) if return_final else None
    varlen = _kernels.empty((nseq, H, P, N), x, torch.float32) if return_varlen else None
    sizes, ws, ws_floats = _kernel_sizes(backend, x, B, nseq, _fwd_workspace_floats, chunk_size)
    _kernels.module(backend).ssd_chunk_scan_fwd(
        _kernels.dtype_code(x), sizes, *_input_refs(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx,
                                                    cu_seqlens),
        _kernels.ref(y), _kernels.ref(final), _kernels.ref(varlen), _kernels.ref(ws), ws_floats,
        dt_softplus, dt_lo, dt_hi, _kernels.exec_arg(backend, x))
    return y, _library.empty_if_none(final, x), _library.empty_if_none(varlen, x)


# Per-thread float32 workspace of the CPU kernels, given (P, N rounded up to 8); mirrors
# ssd::Workspace::floats in ssm/ops/cpu/ssd_common.h (the kernel checks it).
def _fwd_workspace_floats(P, Np, L):
    block, r16 = 16, lambda n: (n + 15) // 16 * 16
    return r16(P * Np) + 2 * r16(block * Np) + 3 * r16(block * P) + 4 * 16 + r16(8 * block * 8)


# The CPU backward keeps the state entering every 16-token block while those states take at most
# this many bytes a thread (then one forward pass suffices); beyond, two-level checkpoints (a state
# per 512-token segment and per block of one segment) bound them, for one more forward pass.
SINGLE_LEVEL_CHECKPOINT_BYTES = 8 << 20


def _bwd_workspace_floats(P, Np, L):
    # ssd::Workspace::floats + BwdWorkspace::floats (ssm/ops/cpu/ssd_chunk_scan_bwd.cpp), whose
    # kernel takes one segment when this workspace has room for it
    block, r16 = 16, lambda n: (n + 15) // 16 * 16
    nblocks = (L + block - 1) // block
    seg = max(1, nblocks) if nblocks * P * Np * 4 <= SINGLE_LEVEL_CHECKPOINT_BYTES else 32
    nsegs = (nblocks + seg - 1) // seg
    return (_fwd_workspace_floats(P, Np, L) + r16(nsegs * P * Np) + r16(min(nblocks, seg) * P * Np)
            + r16((block + 1) * P * Np) + r16(P * Np) + r16(block * P) + 2 * r16(block * Np) + r16(block * 8)
            + r16(2 * nsegs) + r16(2 * seg))


# The CUDA kernels' chunk: the caller's chunk_size rounded up to a multiple of 64, at most 256
# (the result does not depend on it beyond rounding).
def _cuda_chunk(chunk_size):
    return min(256, max(64, (chunk_size + 63) // 64 * 64))


# The CUDA workspace (one row of float32): chunk records, float32 chunk states, the entering
# states in the element type and, for 2-byte types, the float32 C B^T of each chunk and group,
# the entering states' residues and the chunk tokens;
# mirrors ssd::layout in ssm/ops/cuda/ssd_chunk_scan.cuh.
def _r64(n):
    return (n + 63) // 64 * 64


def _cuda_workspace_floats(batch, L, H, P, N, chunk, elem_bytes, G):
    nc = (L + chunk - 1) // chunk
    bhc = batch * H * nc
    spn = bhc * P * N
    base = _r64(bhc * 8) + _r64(spn) + _r64((spn * elem_bytes + 3) // 4)
    if elem_bytes != 2:
        return base
    # + C B^T, H_in's residue (hinlo) and the chunk tokens (Δ, cs, weights: 3 x 256 floats per chunk)
    return base + _r64(batch * nc * G * chunk * chunk) + _r64((spn * 2 + 3) // 4) + _r64(bhc * 3 * 256)


def _kernel_reason(backend, kernel, x, B, C, *more):
    if backend == "cuda" and B.shape[-1] > 256:
        return f"the CUDA SSD kernels take state sizes N <= 256, got {B.shape[-1]}"
    return _kernels.kernel_reason(backend, kernel, x, B, C, *more)


def _kernel_sizes(backend, x, B, nseq, workspace_fn, chunk_size=0):
    batch, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    if backend == "cuda":
        chunk = _cuda_chunk(chunk_size)
        ws_floats = _cuda_workspace_floats(batch, L, H, P, N, chunk, x.element_size(), G)
        ws = torch.empty((1, ws_floats), dtype=torch.float32, device=x.device)
        return [batch, L, H, P, G, N, nseq, 1, chunk], ws, ws_floats
    threads = max(1, min(_kernels.exec_arg(backend, x), batch * H)) if backend == "cpu" else 1
    ws_floats = workspace_fn(P, (N + 7) // 8 * 8, L)
    ws = torch.empty((threads, ws_floats), dtype=torch.float32, device=x.device)
    return [batch, L, H, P, G, N, nseq, threads], ws, ws_floats


def _input_refs(*tensors):
    return tuple(_kernels.ref(t) for t in tensors)


def _int32(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.to(torch.int32)


@_library.custom_op("ssm::ssd_chunk_scan_fwd", mutates_args=())
def _fwd_op(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
            dt_bias: Optional[Tensor], initial_states: Optional[Tensor], seq_idx: Optional[Tensor],
            cu_seqlens: Optional[Tensor], chunk_size: int, dt_softplus: bool, dt_lo: float, dt_hi: float,
            return_final: bool, return_varlen: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _fwd_impl(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, chunk_size,
                     dt_softplus, dt_lo, dt_hi, return_final, return_varlen)


@_fwd_op.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, chunk_size, dt_softplus,
      dt_lo, dt_hi, return_final, return_varlen):
    batch, _, H, P = x.shape
    N = B.shape[-1]
    state = torch.float64 if x.dtype == torch.float64 else torch.float32
    final = x.new_empty((batch, H, P, N), dtype=state) if return_final else x.new_empty(0)
    varlen = x.new_empty((cu_seqlens.shape[0] - 1, H, P, N), dtype=state) if return_varlen else x.new_empty(0)
    return x.new_empty(x.shape), final, varlen


# ---- backward --------------------------------------------------------------------------------

def _bwd_impl(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dy, dfinal, dvarlen,
              chunk_size, dt_softplus, dt_lo, dt_hi, return_final, return_varlen):
    def forward(x, dt, A, B, C, D, z, dt_bias, initial_states):
        return _reference_forward(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, chunk_size,
                                  dt_softplus, dt_lo, dt_hi, return_final, return_varlen)
    grads = _library.reference_vjp(forward, (x, dt, A, B, C, D, z, dt_bias, initial_states),
                                   (dy, dfinal if return_final else None, dvarlen if return_varlen else None))
    return tuple(_library.empty_if_none(g, x) for g in grads)


def _bwd_kernel(backend, x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dy, dfinal, dvarlen,
                dt_softplus, dt_lo, dt_hi):
    # Partial sums come back in float32 and are reduced here: dA, dD per head, dB, dC per thread.
    batch, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    nseq = 0 if cu_seqlens is None else cu_seqlens.shape[0] - 1
    seq_idx, cu_seqlens = _int32(seq_idx), _int32(cu_seqlens)
    f32 = torch.float32
    dx = _kernels.empty(x.shape, x)
    dz = None if z is None else _kernels.empty(x.shape, x)
    ddt, dA = _kernels.empty((batch, L, H), x, f32), _kernels.empty((batch, H), x, f32)
    dD = None if D is None else _kernels.empty((batch, H, P), x, f32)
    dinit = None if initial_states is None else _kernels.empty(initial_states.shape, x, f32)
    sizes, ws, ws_floats = _kernel_sizes(backend, x, B, nseq, _bwd_workspace_floats)
    # per-thread sums over that thread's heads
    rows = ws.shape[0]
    dB, dC = (torch.zeros((rows * batch, L, G, N), dtype=f32, device=x.device) for _ in range(2))
    _kernels.module(backend).ssd_chunk_scan_bwd(
        _kernels.dtype_code(x), sizes, *_input_refs(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx,
                                                    cu_seqlens),
        *_input_refs(dy, dfinal, dvarlen, dx, dz, ddt, dA, dB, dC, dD, dinit, ws), ws_floats,
        dt_softplus, dt_lo, dt_hi, _kernels.exec_arg(backend, x))
    dB = dB.view(rows, batch, L, G, N).sum(0).to(B.dtype)
    dC = dC.view(rows, batch, L, G, N).sum(0).to(C.dtype)
    grads = (dx, ddt.to(dt.dtype), dA.sum(0).to(A.dtype), dB, dC, None if dD is None else dD.sum(0).to(D.dtype),
             dz, None if dt_bias is None else ddt.sum((0, 1)).to(dt_bias.dtype), dinit)
    return tuple(_library.empty_if_none(g, x) for g in grads)


def _cuda_scan(chunk_size):
    """The CUDA forward as the primitive of the composed backward (ssm/ops/ssd_bwd.py): processed
    Δ in, no D / z; ``unit`` injects x_t B_t^T without the Δ_t factor."""
    def scan(x, delta, A, B, C, init, seq_idx, unit, want_final):
        # -> y, final states, the chunk states entering each chunk (B, nchunks, H, P, N) (workspace view)
        batch, L, H, P = x.shape
        N = B.shape[-1]
        y = _kernels.empty((batch, L, H, P), x)
        final = _kernels.empty((batch, H, P, N), x, torch.float32) if want_final else None
        sizes, ws, ws_floats = _kernel_sizes("cuda", x, B, 0, None, chunk_size)
        _kernels.module("cuda").ssd_chunk_scan_fwd(
            _kernels.dtype_code(x), sizes + [int(unit)],
            *_input_refs(x, delta, A, B, C, None, None, None, init, seq_idx, None),
            _kernels.ref(y), _kernels.ref(final), None, _kernels.ref(ws), ws_floats,
            False, -_INF, _INF, _kernels.exec_arg("cuda", x))
        nc = (L + sizes[8] - 1) // sizes[8]
        # the entering states H_in in x's dtype, after the chunk records and the float32 chunk states
        count = batch * nc * H * P * N
        start = _r64(batch * H * nc * 8) + _r64(count)
        h_in = ws[0, start:start + (count * x.element_size() + 3) // 4].view(x.dtype)[:count]
        return y, final, h_in.view(batch, nc, H, P, N)
    return scan


def _bwd_cuda(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dy, dfinal, chunk_size, dt_softplus,
              dt_lo, dt_hi):
    """The dedicated CUDA backward (ssm/ops/cuda/ssd_chunk_scan_bwd.cu); the gate and the sums of the
    kernel's partials (a group's heads, chunks, tiles) are done here."""
    batch, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    f32, chunk = torch.float32, _cuda_chunk(chunk_size)
    dz = None
    if z is not None:  # the gate needs the scan's output: y = (ŷ + D x) silu(z)
        y_hat = _fwd_impl(x, dt, A, B, C, None, None, dt_bias, initial_states, seq_idx, None, chunk_size,
                          dt_softplus, dt_lo, dt_hi, False, False)[0]
        dyf, dz, _ = ssd_bwd._gate_grads(y_hat.float(), x, D, z, dy)
        dy = dyf.to(x.dtype)
        dz = dz.to(z.dtype)
    nc, nq = (L + chunk - 1) // chunk, chunk // 64
    dD = None if D is None else _kernels.empty((batch * nc * nq, H, P), x, f32)
    # the backward's workspace row follows the forward's layout: its size comes from the CUDA module
    cuda, sizes = _kernels.module("cuda"), [batch, L, H, P, G, N, chunk]
    ws_floats = cuda.ssd_chunk_scan_bwd_workspace_floats(_kernels.dtype_code(x), sizes)
    sets = cuda.ssd_chunk_scan_bwd_head_sets(_kernels.dtype_code(x), sizes)  # dB / dC partial sums per row
    ws = torch.empty((1, ws_floats), dtype=f32, device=x.device)
    dx = _kernels.empty(x.shape, x)
    ddt, dA = _kernels.empty((batch, L, H), x, f32), _kernels.empty((batch * H, nc), x, f32)
    dBh, dCh = _kernels.empty((batch, L, sets, N), x, f32), _kernels.empty((batch, L, sets, N), x, f32)
    dinit = None if initial_states is None else _kernels.empty(initial_states.shape, x, f32)
    _kernels.module("cuda").ssd_chunk_scan_bwd(
        _kernels.dtype_code(x), [batch, L, H, P, G, N, 0, 1, chunk],
        *_input_refs(x, dt, A, B, C, D, None, dt_bias, initial_states, _int32(seq_idx), None),
        *_input_refs(dy, dfinal, None, dx, None, ddt, dA, dBh, dCh, dD, dinit, ws), ws_floats,
        dt_softplus, dt_lo, dt_hi, _kernels.exec_arg("cuda", x))
    if _BWD_REDUCE:
        sums = _reduce_kernel(cuda, x, B, D, dt_bias, sets, dBh, dCh, dA, dD, ddt)
    else:
        sums = _reduce_torch(x, B, C, A, D, dt_bias, sets, dBh, dCh, dA, dD, ddt)
    dB, dC, dA, dD, ddt_bias = sums
    grads = (dx, ddt.to(dt.dtype), dA, dB, dC, dD, dz, ddt_bias, dinit)
    return tuple(_library.empty_if_none(g, x) for g in grads)


# SSM_SSD_BWD_REDUCE=0: the backward's last sums by torch ops instead of one kernel
_BWD_REDUCE = os.environ.get("SSM_SSD_BWD_REDUCE", "1") != "0"


def _reduce_kernel(cuda, x, B, D, dt_bias, sets, dBh, dCh, dA, dD, ddt):
    """(dB, dC, dA, dD, ddt_bias) from the kernel's partials in one launch (ssd_chunk_scan_bwd_reduce.cu)."""
    batch, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    f32 = torch.float32
    dB, dC = _kernels.empty((batch, L, G, N), x), _kernels.empty((batch, L, G, N), x)
    dA_h = _kernels.empty((H,), x, f32)
    dD_h = None if dD is None else _kernels.empty((H, P), x, f32)
    dbias = None if dt_bias is None else _kernels.empty((H,), x, f32)
    cuda.ssd_chunk_scan_bwd_reduce(
        _kernels.dtype_code(x), [batch, L, H, P, G, N, sets, dA.shape[1], 0 if dD is None else dD.shape[0]],
        *_input_refs(dBh, dCh, dB, dC, dA, dA_h, dD, dD_h, ddt, dbias), _kernels.exec_arg("cuda", x))
    return dB, dC, dA_h, dD_h, dbias


def _reduce_torch(x, B, C, A, D, dt_bias, sets, dBh, dCh, dA, dD, ddt):
    """_reduce_kernel by torch ops."""
    batch, L, H, _ = x.shape
    G, N = B.shape[2], B.shape[3]
    # (B, L, sets, N) -> (B, L, G, N): the sum over each group's head sets (none when one set per group)
    dB, dC = (t if sets == G else t.view(batch, L, G, sets // G, N).sum(3) for t in (dBh, dCh))
    return (dB.to(B.dtype), dC.to(C.dtype), dA.view(batch, H, -1).sum((0, 2)).to(A.dtype),
            None if dD is None else dD.sum(0), None if dt_bias is None else ddt.sum((0, 1)).to(dt_bias.dtype))


def _use_bwd_kernel(x, B, C):
    """The dedicated CUDA backward, unless SSM_SSD_BWD_KERNEL=0 selects the composed one."""
    if os.environ.get("SSM_SSD_BWD_KERNEL", "1") == "0":
        return False
    return _kernels.kernel_reason("cuda", "ssd_chunk_scan_bwd", x, B, C) is None


def _bwd_composed(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dy, dfinal, chunk_size, dt_softplus,
                  dt_lo, dt_hi):
    grads = ssd_bwd.backward(_cuda_scan(chunk_size), _cuda_chunk(chunk_size), x, dt, A, B, C, D, z, dt_bias,
                             initial_states, _int32(seq_idx), dy, dfinal, dt_softplus, dt_lo, dt_hi)
    return tuple(_library.empty_if_none(g, x) for g in grads)


def _bwd_reason(backend, x, B, C, z, dy, cu_seqlens):
    # CUDA: the dedicated kernel, or with SSM_SSD_BWD_KERNEL=0 the backward composed of forward scans
    # (ssd_bwd.py); SSM_SSD_COMPOSED_BWD=0 opts out of both
    if backend == "cuda":
        if os.environ.get("SSM_SSD_COMPOSED_BWD", "1") == "0":
            return "SSM_SSD_COMPOSED_BWD=0 selects the reference backward"
        if cu_seqlens is not None:
            return "the composed CUDA backward takes no cu_seqlens (varlen batches use the reference backward)"
        if x.shape[1] == 0 or x.shape[-1] > 256:
            return f"the composed CUDA backward takes L >= 1 and P <= 256, got L={x.shape[1]}, P={x.shape[-1]}"
        return _kernel_reason(backend, "ssd_chunk_scan_fwd", x, B, C, z, dy)
    return _kernel_reason(backend, "ssd_chunk_scan_bwd", x, B, C, z, dy)


@_library.custom_op("ssm::ssd_chunk_scan_bwd", mutates_args=())
def _bwd_op(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
            dt_bias: Optional[Tensor], initial_states: Optional[Tensor], seq_idx: Optional[Tensor],
            cu_seqlens: Optional[Tensor], dy: Tensor, dfinal: Tensor, dvarlen: Tensor, chunk_size: int,
            dt_softplus: bool, dt_lo: float, dt_hi: float, return_final: bool,
            return_varlen: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    backend = dispatch.select_backend("ssd_chunk_scan_bwd", x.device,
                                      lambda b: _bwd_reason(b, x, B, C, z, dy, cu_seqlens))
    if backend == "cuda":
        bwd = _bwd_cuda if _use_bwd_kernel(x, B, C) else _bwd_composed
        return bwd(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dy,
                             _library.none_if_empty(dfinal), chunk_size, dt_softplus, dt_lo, dt_hi)
    if backend != "reference":
        return _bwd_kernel(backend, x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dy,
                           _library.none_if_empty(dfinal), _library.none_if_empty(dvarlen), dt_softplus, dt_lo, dt_hi)
    return _bwd_impl(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dy, dfinal, dvarlen,
                     chunk_size, dt_softplus, dt_lo, dt_hi, return_final, return_varlen)


@_bwd_op.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dy, dfinal, dvarlen, chunk_size,
      dt_softplus, dt_lo, dt_hi, return_final, return_varlen):
    def like(t):
        return x.new_empty(0) if t is None else _library.empty_like(t)
    return tuple(like(t) for t in (x, dt, A, B, C, D, z, dt_bias, initial_states))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:11])
    ctx.flags = inputs[11:]


def _backward(ctx, dy, dfinal, dvarlen):
    saved = ctx.saved_tensors
    dfinal = dfinal if dfinal is not None else saved[0].new_empty(0)
    dvarlen = dvarlen if dvarlen is not None else saved[0].new_empty(0)
    grads = _bwd_op(*saved, dy, dfinal, dvarlen, *ctx.flags)
    grads = [None if saved[i] is None else g for i, g in enumerate(grads)]
    return (*grads, None, None) + (None,) * len(ctx.flags)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ---- validation ------------------------------------------------------------------------------

def _seq_meta(seq_meta, seq_idx, cu_seqlens):
    """seq_idx / cu_seqlens from the keyword arguments or the ``seq_meta`` dict (not both)."""
    if seq_meta is None:
        return seq_idx, cu_seqlens
    if not isinstance(seq_meta, dict):
        raise TypeError(f"seq_meta: expected a dict with 'seq_idx' / 'cu_seqlens', got {type(seq_meta).__name__}")
    unknown = set(seq_meta) - {"seq_idx", "cu_seqlens"}
    if unknown:
        raise ValueError(f"seq_meta: unexpected keys {sorted(unknown)}; expected 'seq_idx' and/or 'cu_seqlens'")
    for name, given in (("seq_idx", seq_idx), ("cu_seqlens", cu_seqlens)):
        if given is not None and seq_meta.get(name) is not None:
            raise ValueError(f"{name}: given both as an argument and in seq_meta")
    return (seq_idx if seq_idx is not None else seq_meta.get("seq_idx"),
            cu_seqlens if cu_seqlens is not None else seq_meta.get("cu_seqlens"))


def _check_dt_limit(dt_limit) -> tuple[float, float]:
    if not isinstance(dt_limit, (tuple, list)) or len(dt_limit) != 2:
        raise ValueError(f"dt_limit: expected a pair (low, high), got {dt_limit!r}")
    try:
        lo, hi = float(dt_limit[0]), float(dt_limit[1])
    except (TypeError, ValueError):
        raise TypeError(f"dt_limit: expected two numbers, got {dt_limit!r}") from None
    if not lo <= hi:  # also rejects NaN
        raise ValueError(f"dt_limit: expected low <= high, got {dt_limit!r}")
    return lo, hi


def _check_args(x, dt, A, B, C, chunk_size, D, z, initial_states, dt_bias, seq_idx, cu_seqlens, return_varlen):
    _checks.tensor("x", x, ndim=4)
    batch, L, H, P = x.shape
    dev = x.device
    _checks.positive_int("chunk_size", chunk_size)
    _checks.tensor("dt", dt, shape=(batch, L, H), device=dev)
    _checks.tensor("A", A, shape=(H,), device=dev)
    _checks.tensor("B", B, ndim=4, device=dev)
    G, N = B.shape[2], B.shape[3]
    _checks.tensor("B", B, shape=(batch, L, G, N))
    if G == 0 or H % G != 0:
        raise ValueError(f"B: the number of groups G={G} must divide the number of heads H={H}")
    _checks.tensor("C", C, shape=(batch, L, G, N), device=dev)
    _checks.tensor("D", D, ndim=(1, 2), device=dev, optional=True)
    if D is not None and tuple(D.shape) not in ((H,), (H, P)):
        raise ValueError(f"D: expected shape ({H},) or ({H}, {P}), got {tuple(D.shape)}")
    _checks.tensor("z", z, shape=(batch, L, H, P), device=dev, optional=True)
    _checks.tensor("dt_bias", dt_bias, shape=(H,), device=dev, optional=True)
    _checks.seq_idx(seq_idx, batch, L, dev)
    _checks.cu_seqlens(cu_seqlens, L, dev, batch)
    # with cu_seqlens every packed sequence starts from its own initial state
    starts = batch if cu_seqlens is None else cu_seqlens.shape[0] - 1
    _checks.tensor("initial_states", initial_states, shape=(starts, H, P, N), device=dev, optional=True)
    if return_varlen and cu_seqlens is None:
        raise ValueError("cu_seqlens: return_varlen_states=True needs cu_seqlens (the sequence offsets)")


def _kernel_dtype(x, B, C, z) -> torch.dtype:
    """One element type for x, B, C, z (the widest among them)."""
    dtype = x.dtype
    for t in (B, C, z):
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _as(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """t in dtype (itself when it already is: no dispatcher round trip)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


# ---- eager fast path of the forward without autograd (see state_step.py: plans per signature) --
# A repeated call with the same metadata skips the checks, the custom op's layers, the backend and
# dtype lookups: it converts dt when it is not float32, allocates y, the final states and the
# workspace, and launches the kernels with the strides kept in the plan.

_plans = _kernels.PlanCache()


def _make_plan(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, chunk_size, return_final):
    """The plan of a call that passed the checks, or False for the general path (the reference,
    autograd, mixed or float64 dtypes, parameters or states not in float32, int64 seq_idx, no work)."""
    if x.numel() == 0 or B.numel() == 0 or x.dtype == torch.float64:
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x, dt, A, B, C, D, z, dt_bias, initial_states)):
        return False
    if len({t.dtype for t in (x, B, C, z) if t is not None}) != 1 or \
            any(t is not None and t.dtype != torch.float32 for t in (A, D, dt_bias, initial_states)):
        return False
    if seq_idx is not None and seq_idx.dtype != torch.int32:
        return False
    backend = dispatch.select_backend("ssd_chunk_scan", x.device,
                                      lambda b: _kernel_reason(b, "ssd_chunk_scan_fwd", x, B, C, z))
    if backend == "reference":
        return False
    k = _kernels
    batch, L, H, P = x.shape
    N = B.shape[-1]
    sizes, ws, ws_floats = _kernel_sizes(backend, x, B, 0, _fwd_workspace_floats, chunk_size)
    final = (batch, H, P, N) if return_final else None
    # D (H,) or (H, P) as the kernel's (H, P) view; dt as float32 (a contiguous copy when converted)
    views = (x, _as(dt, torch.float32), A, B, C, None if D is None else D.reshape(H, -1).expand(H, P), z, dt_bias,
             initial_states, seq_idx, None, k.empty(x.shape, x),
             None if final is None else k.empty(final, x, torch.float32), None)  # cu_seqlens, varlen: None
    tails = k.ref_tails((k.AS_IS,) * len(views), views)
    kernel = k.module(backend).ssd_chunk_scan_fwd
    return backend, kernel, k.dtype_code(x), sizes, tails, ws_floats, k.output_spec(x), final


def _run_plan(plan, x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, softplus, lo, hi):
    backend, kernel, code, sizes, tails, ws_floats, y_spec, final_shape = plan
    k = _kernels
    ex = k.exec_arg(backend, x)
    if backend == "cpu":  # the thread count of this call (the workspace has a row per thread)
        sizes = sizes[:7] + [max(1, min(ex, sizes[0] * sizes[2]))]
    ws = torch.empty((sizes[7] if backend == "cpu" else 1, ws_floats), dtype=torch.float32, device=x.device)
    y = k.planned_output(x, y_spec)
    final = None if final_shape is None else k.new_empty(final_shape, torch.float32, x.device)
    dt32 = _as(dt, torch.float32)  # held until the kernels are launched (their pointer is all they get)
    kernel(code, sizes, *k.planned_refs(tails, (x, dt32, A, B, C, D, z, dt_bias, initial_states, seq_idx, None, y,
                                                final, None)),
           k.ref(ws), ws_floats, softplus, lo, hi, ex)
    return y if final is None else (y, final)


# ---- public ----------------------------------------------------------------------------------

def ssd_chunk_scan(X: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
                   D: Optional[Tensor] = None, z: Optional[Tensor] = None, seq_meta: Optional[dict] = None,
                   initial_states: Optional[Tensor] = None, *, dt_bias: Optional[Tensor] = None,
                   dt_softplus: bool = False, dt_limit=(0.0, _INF), seq_idx: Optional[Tensor] = None,
                   cu_seqlens: Optional[Tensor] = None, return_final_states: bool = False,
                   return_varlen_states: bool = False):
    """Mamba-2 SSD scan: X (B, L, H, P), dt (B, L, H), A (H,), B, C (B, L, G, N) -> Y (B, L, H, P).

    D (H,) or (H, P) skip term; z (B, L, H, P) gate (y *= silu(z)); dt_bias (H,), dt_softplus and
    dt_limit shape Δ; initial_states (B, H, P, N). ``seq_idx`` (B, L) resets the state (to zero)
    where it changes. ``cu_seqlens`` (nseq+1,) with batch 1 packs sequences along L: each starts
    from its own initial state (initial_states is then (nseq, H, P, N)) and seq_idx is ignored.
    ``seq_meta`` may carry either. Returns Y, or a tuple with final_states (B, H, P, N) and/or
    varlen_states (nseq, H, P, N), both float32. ``chunk_size`` is the reference's chunk length;
    the CPU kernel runs the recurrence token by token, so its result does not depend on it.
    """
    plain = seq_meta is None and cu_seqlens is None and not return_varlen_states
    sig, plan = (None, None) if torch.compiler.is_compiling() or not plain else _kernels.find_plan(
        _plans, (type(chunk_size), chunk_size, bool(dt_softplus), dt_limit, bool(return_final_states),
                 torch.is_grad_enabled()), (X, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx))
    if plan:
        return _run_plan(plan, X, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, bool(dt_softplus),
                         float(dt_limit[0]), float(dt_limit[1]))
    seq_idx, cu_seqlens = _seq_meta(seq_meta, seq_idx, cu_seqlens)
    _check_args(X, dt, A, B, C, chunk_size, D, z, initial_states, dt_bias, seq_idx, cu_seqlens,
                return_varlen_states)
    dt_lo, dt_hi = _check_dt_limit(dt_limit)
    H, P = X.shape[2], X.shape[3]
    dtype = _kernel_dtype(X, B, C, z)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x, Bk, Ck, zk = (_as(t, dtype) for t in (X, B, C, z))
    Dk = None if D is None else _as(D, acc).reshape(H, -1).expand(H, P)
    params = [_as(t, acc) for t in (dt, A, dt_bias, initial_states)]
    args = (x, params[0], params[1], Bk, Ck, Dk, zk, params[2], params[3], seq_idx, cu_seqlens, chunk_size,
            bool(dt_softplus), dt_lo, dt_hi, bool(return_final_states), bool(return_varlen_states))
    if _library.use_custom_op(x, *params, Bk, Ck, Dk, zk):
        y, final, varlen = _fwd_op(*args)
    else:
        if sig is not None:
            _plans[sig] = _make_plan(X, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, chunk_size,
                                     bool(return_final_states))
        y, final, varlen = _fwd_impl(*args)
    y = _as(y, X.dtype)
    outs = (y,) + ((final,) if return_final_states else ()) + ((varlen,) if return_varlen_states else ())
    return outs[0] if len(outs) == 1 else outs


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                              seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, _INF),
                              return_final_states=False, return_varlen_states=False, state_dtype=None):
    """``mamba_ssm``'s name: :func:`ssd_chunk_scan`; varlen states come in ``state_dtype``
    (default C.dtype) as there, final states in float32."""
    out = ssd_chunk_scan(x, dt, A, B, C, chunk_size, D=D, z=z, initial_states=initial_states, dt_bias=dt_bias,
                         dt_softplus=dt_softplus, dt_limit=dt_limit, seq_idx=seq_idx,
                         cu_seqlens=cu_seqlens if return_varlen_states else None,
                         return_final_states=return_final_states, return_varlen_states=return_varlen_states)
    if not return_varlen_states:
        return out
    out = list(out)
    out[-1] = out[-1].to(state_dtype or C.dtype)
    return tuple(out)


def ssd_chunk_scan_combined_ref(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False):
    """``mamba_ssm``'s pure-torch reference of the combined scan (any sequence length here)."""
    y, _, _ = _reference_forward(x, dt, A, B, C, D, z, dt_bias, None, None, None, chunk_size, dt_softplus,
                                 0.0, _INF, False, False)
    return y
