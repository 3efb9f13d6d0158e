"""One fused decode step of a Mamba-2 layer: the depthwise conv update of the raw xBC row on its
rolling conv_state, then the selective state step with per-head dt, dt_bias and A.

On CUDA this is one kernel (ssm/ops/cuda/conv_state_step.cu) instead of two; elsewhere, when
compiling, or for arguments that kernel does not take, it is the composition of the public ops
``causal_conv1d_update`` and ``selective_state_step``, with the same results. ``Mamba2.step``
uses it; ``SSM_FUSED_DECODE=0`` turns the fused kernel off. No host synchronization (CUDA-graph
capturable)."""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from ssm.ops import _checks, _kernels
from ssm.ops.conv import _ACTIVATIONS, causal_conv1d_update
from ssm.ops.state_step import selective_state_step
from ssm.utils import dispatch


def _composed(xBC, conv_state, conv_weight, conv_bias, ssm_state, dt, A, D, dt_bias, z, ngroups, activation,
              dt_softplus):
    # xBC (B, H*P + 2*G*N) -> x (B, H, P), B, C (B, G, N) -> y (B, H, P)
    batch, H, P, N = ssm_state.shape[0], ssm_state.shape[1], ssm_state.shape[2], ssm_state.shape[3]
    xBC = causal_conv1d_update(xBC, conv_state, conv_weight, conv_bias, activation)
    x, B, C = torch.split(xBC, [H * P, ngroups * N, ngroups * N], dim=-1)
    return selective_state_step(ssm_state, x.view(batch, H, P), dt, A, B.view(batch, ngroups, N),
                                C.view(batch, ngroups, N), D, z, dt_bias, dt_softplus)


def _check_args(xBC, conv_state, conv_weight, conv_bias, ssm_state, dt, A, D, dt_bias, z, ngroups):
    _checks.tensor("ssm_state", ssm_state, ndim=4)
    batch, H, P, N = ssm_state.shape
    dev = ssm_state.device
    if not isinstance(ngroups, int) or ngroups < 1 or H % ngroups:
        raise ValueError(f"ngroups: expected a positive divisor of the {H} heads, got {ngroups!r}")
    conv_dim = H * P + 2 * ngroups * N
    _checks.tensor("xBC", xBC, shape=(batch, conv_dim), device=dev)
    _checks.tensor("conv_state", conv_state, shape=(batch, conv_dim, None), device=dev)
    _checks.tensor("conv_weight", conv_weight, ndim=(2, 3), device=dev)
    if conv_weight.shape[0] != conv_dim or (conv_weight.dim() == 3 and conv_weight.shape[1] != 1):
        raise ValueError(f"conv_weight: expected shape ({conv_dim}, W), got {tuple(conv_weight.shape)}")
    _checks.tensor("conv_bias", conv_bias, shape=(conv_dim,), device=dev, optional=True)
    _checks.tensor("dt", dt, shape=(batch, H), device=dev)
    _checks.tensor("A", A, shape=(H,), device=dev)
    _checks.tensor("D", D, ndim=(1, 2), device=dev, optional=True)
    if D is not None and tuple(D.shape) not in ((H,), (H, P)):
        raise ValueError(f"D: expected shape ({H},) or ({H}, {P}), got {tuple(D.shape)}")
    _checks.tensor("dt_bias", dt_bias, shape=(H,), device=dev, optional=True)
    _checks.tensor("z", z, shape=(batch, H, P), device=dev, optional=True)


# ---- the fused kernel ------------------------------------------------------------------------

FUSED = os.environ.get("SSM_FUSED_DECODE", "1") != "0"
MAX_BATCH = 8

# (device, stream, early, slot) -> counter buffers (int32, zero between launches); older, smaller ones are
# kept alive because captured CUDA graphs may still point at them. The early form (states_settled) draws its
# tickets before the PDL wait, possibly while the launch before it still zeroes its counter: consecutive
# early launches alternate between two slots (a launch starts only once every kernel but the one just
# before it has finished); the late form draws after the wait, when the kernel before has finished.
_counters: dict = {}
_slots: dict = {}


def _counter_buffer(device: torch.device, stream: int, n: int, early: bool) -> Tensor:
    slot = 0
    if early:
        slot = _slots[device, stream] = 1 - _slots.get((device, stream), 1)
    bufs = _counters.setdefault((device, stream, early, slot), [])
    if not bufs or bufs[-1].numel() < n:
        bufs.append(torch.zeros(max(n, 256), dtype=torch.int32, device=device))
    return bufs[-1]


def _vector_rows(t: Tensor) -> bool:
    """True when the rows along the last dimension start 16-byte aligned and are contiguous."""
    per = 16 // t.element_size()
    return t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all(s % per == 0 for s in t.stride()[:-1])


def _fusable(xBC, conv_state, conv_weight, ssm_state, dt, z) -> bool:
    if not FUSED or xBC.device.type != "cuda" or dispatch.forced_backend() not in (None, "cuda"):
        return False
    if not dispatch.has_cuda_kernels() or not hasattr(dispatch.cuda_module(), "conv_state_step"):
        return False
    act = xBC.dtype
    if act not in _kernels.KERNEL_DTYPES or any(t is not None and t.dtype != act for t in (conv_state, dt, z)):
        return False
    N, W = ssm_state.shape[-1], conv_weight.shape[-1]
    # large batches keep the two kernels: there every block recomputing its group's B/C conv before
    # its step costs more than the launch it saves (H200, mamba2-130m b64: 1.42 vs 1.07 ms per token)
    return (ssm_state.dtype in (act, torch.float32) and N % 8 == 0 and 8 <= N <= 256 and _vector_rows(ssm_state)
            and ssm_state.shape[1] <= 65535 and 0 < xBC.shape[0] <= MAX_BATCH
            and conv_state.shape[-1] >= W - 1 and conv_state.shape[-1] >= 1)


def _fused(xBC, conv_state, conv_weight, conv_bias, ssm_state, dt, A, D, dt_bias, z, ngroups, silu, softplus,
           settled=False):
    batch, H, P, N = ssm_state.shape
    f32 = _kernels.float32_param
    w = conv_weight if conv_weight.dtype == torch.float32 else f32(conv_weight)
    bias, A, D, dt_bias = (t if t is None or t.dtype == torch.float32 else f32(t) for t in (conv_bias, A, D, dt_bias))
    out = _kernels.empty((batch, H, P), xBC)
    stream = torch.cuda.current_stream(xBC.device).cuda_stream
    counters = _counter_buffer(xBC.device, stream, batch * ngroups, settled)
    r = _kernels.ref
    w_ref = (w.data_ptr(), w.stride(0), w.stride(-1))
    D_ref = None if D is None else (D.data_ptr(), D.stride(0), D.stride(1) if D.dim() == 2 else 0)
    dispatch.cuda_module().conv_state_step(
        _kernels.dtype_code(ssm_state), _kernels.dtype_code(xBC), batch, H, P, N, ngroups, conv_weight.shape[-1],
        conv_state.shape[-1], r(xBC), r(conv_state), w_ref, r(bias), r(ssm_state), r(dt), r(A), D_ref, r(dt_bias),
        r(z), r(counters), r(out), softplus, silu, settled, stream)
    return out


# ---- public (to the modules) -------------------------------------------------------------------

def conv_state_step(xBC: Tensor, conv_state: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor],
                    ssm_state: Tensor, dt: Tensor, A: Tensor, D: Optional[Tensor] = None,
                    dt_bias: Optional[Tensor] = None, z: Optional[Tensor] = None, *, ngroups: int = 1,
                    activation: Optional[str] = "silu", dt_softplus: bool = True,
                    states_settled: bool = False) -> Tensor:
    """One Mamba-2 decode step: xBC (B, H*P + 2*G*N) raw conv input ([x, B, C] channels);
    conv_state (B, H*P + 2*G*N, S >= W-1) and ssm_state (B, H, P, N) updated in place;
    conv_weight (H*P + 2*G*N, W) or (.., 1, W), conv_bias (H*P + 2*G*N,); dt (B, H); A (H,);
    D (H,) or (H, P); dt_bias (H,); z (B, H, P) -> y (B, H, P) like xBC.
    Same as causal_conv1d_update(xBC, ...) then selective_state_step on its split.
    states_settled=True promises that the kernel launched just before on the stream writes neither
    ssm_state nor conv_state (as in Mamba2.step, where it is in_proj): the CUDA kernel then reads them
    while that kernel still runs (programmatic dependent launch)."""
    args = (xBC, conv_state, conv_weight, conv_bias, ssm_state, dt, A, D, dt_bias, z)
    _check_args(*args, ngroups)
    _checks.choice("activation", activation, _ACTIVATIONS)
    if torch.compiler.is_compiling() or not _fusable(xBC, conv_state, conv_weight, ssm_state, dt, z):
        return _composed(*args, ngroups, activation, dt_softplus)
    return _fused(*args, ngroups, activation is not None, dt_softplus, states_settled)
