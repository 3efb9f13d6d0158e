"""Direct calls of ssm._cuda kernel bindings for the kernels whose op layer lives on another
branch (selective scan, state step): outputs allocated here, exactly as an op would. Used by
the CUDA kernel tests and benchmarks until those ops dispatch to the CUDA module themselves."""
from __future__ import annotations

import torch

from ssm.ops import _kernels
from ssm.utils import dispatch


def _mod():
    return dispatch.cuda_module()


def _stream(t):
    return _kernels.exec_arg("cuda", t)


def selective_scan(u, delta, A, B, C, D=None, z=None, dt_bias=None, softplus=False, return_last_state=False,
                   initial_state=None, seq_idx=None, cu_seqlens=None):
    """Same contract as reference.selective_scan (B/C (D,N), (B,N,L) or (B,G,N,L))."""
    batch, dim, L = u.shape
    N = A.shape[1]
    f32 = lambda t: None if t is None else t.float()
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    B = B.float() if B.dim() == 2 else B
    C = C.float() if C.dim() == 2 else C
    G = B.shape[1] if B.dim() == 4 else (C.shape[1] if C.dim() == 4 else 1)
    nrows = cu_seqlens.numel() - 1 if cu_seqlens is not None else batch
    out = _kernels.empty((batch, dim, L), u)
    last = _kernels.empty((nrows, dim, N), u, torch.float32) if return_last_state else None
    _mod().selective_scan_fwd(
        _kernels.dtype_code(u), batch, dim, L, N, G, 1, _kernels.ref(u), _kernels.ref(delta),
        _kernels.ref(f32(A)), _kernels.ref(B), _kernels.ref(C), _kernels.ref(f32(D)), _kernels.ref(z),
        _kernels.ref(f32(dt_bias)), _kernels.ref(f32(initial_state)),
        _kernels.ref(None if seq_idx is None else seq_idx.to(torch.int32)),
        _kernels.ref(None if cu_seqlens is None else cu_seqlens.to(torch.int32)), nrows,
        _kernels.ref(out), _kernels.ref(last), softplus, _stream(u))
    return (out, last) if return_last_state else out


def selective_state_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, softplus=True,
                         state_batch_indices=None):
    """Same contract as reference.selective_state_step; per-head parameters as stride-0 views."""
    mamba1 = state.dim() == 3
    if mamba1:
        state, x, A = state.unsqueeze(2), x.unsqueeze(-1), A.unsqueeze(1)
        z = None if z is None else z.unsqueeze(-1)
        if B.dim() == 2:
            B, C = B.unsqueeze(1), C.unsqueeze(1)
    _, H, P, N = state.shape
    batch = x.shape[0]
    if dt.dim() == 2:
        dt = dt.unsqueeze(-1)
    dt = dt.expand(batch, H, P)
    A = A.float()
    A = (A[:, None, None] if A.dim() == 1 else A).expand(H, P, N)
    per_head = lambda t: None if t is None else (t.float()[:, None] if t.dim() == 1 else t.float()).expand(H, P)
    out = _kernels.empty((batch, H, P), x)
    idx = None if state_batch_indices is None else state_batch_indices.to(torch.int32)
    _mod().selective_state_step(
        _kernels.dtype_code(state), _kernels.dtype_code(x), batch, H, P, N, B.shape[1], _kernels.ref(state),
        _kernels.ref(x), _kernels.ref(dt), _kernels.ref(A), _kernels.ref(B), _kernels.ref(C),
        _kernels.ref(per_head(D)), _kernels.ref(z), _kernels.ref(per_head(dt_bias)), _kernels.ref(idx),
        _kernels.ref(out), softplus, _stream(x))
    return out[:, :, 0] if mamba1 else out
