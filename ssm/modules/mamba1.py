"""Mamba-1 mixer (``mamba_ssm.modules.mamba_simple.Mamba``): same constructor, parameters,
initialization, inference cache and ``step``; computes through ``ssm.ops`` on every device.

Beyond the reference, ``forward`` takes packed batches (``seq_idx`` / ``cu_seqlens``), explicit
initial states (``initial_state``, ``initial_conv_state``) and continues a cached prefix with
several new tokens at once (chunked prefill)."""
from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssm import ops
from ssm.modules import _states
from ssm.ops import batch_decode, cpu_matmul
from ssm.ops import mamba1_decode as _m1d
from ssm.ops.norm_gemv import norm_linear, small_linear
from ssm.ops.proj_state_step import proj_state_step

# mamba_inner_fn's checkpoint_lvl in training: 1 (default, as mamba_ssm's Mamba) keeps the scan output and
# the CUDA scan's chunk states (y 50 MB, states 100 MB a layer at mamba-130m 8 x 2048) and recomputes the
# conv and dt in the backward; 0 (SSM_MAMBA1_CHECKPOINT_LVL=0) keeps the conv output too; 2 keeps only the
# inputs and reruns the forward scan in the backward.
CHECKPOINT_LVL = int(os.environ.get("SSM_MAMBA1_CHECKPOINT_LVL", "1"))


class Mamba1(nn.Module):
    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001, dt_max=0.1,
                 dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True, bias=False,
                 use_fast_path=True, layer_idx=None, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(self.expand * self.d_model)
        self.dt_rank = math.ceil(self.d_model / 16) if dt_rank == "auto" else dt_rank
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx

        self.in_proj = nn.Linear(self.d_model, self.d_inner * 2, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory_kwargs)
        self.activation = "silu"
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + self.d_state * 2, bias=False, **factory_kwargs)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)
        self._init_dt_proj(dt_init, dt_scale, dt_min, dt_max, dt_init_floor, factory_kwargs)

        # S4D-real initialization, kept in float32 whatever the factory dtype
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias, **factory_kwargs)

    def _init_dt_proj(self, dt_init, dt_scale, dt_min, dt_max, dt_init_floor, factory_kwargs):
        """dt_proj.weight ~ U(+-std) (or constant std); bias = softplus^-1 of a log-uniform dt in [dt_min, dt_max]."""
        std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        else:
            raise ValueError(f"dt_init: expected 'random' or 'constant', got {dt_init!r}")
        dt = torch.exp(torch.rand(self.d_inner, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True

    def forward(self, hidden_states: Tensor, inference_params=None, *, seqlen: int | None = None,
                seq_idx: Tensor | None = None, cu_seqlens: Tensor | None = None,
                initial_state: Tensor | None = None, initial_conv_state: Tensor | None = None, **kwargs) -> Tensor:
        """hidden_states (B, L, d_model), or (B*L, d_model) with ``seqlen`` -> same shape.

        seq_idx (B, L) int32 or cu_seqlens (nseq+1,) (batch 1) keep packed sequences apart.
        initial_state: SSM state before token 0, (B, d_inner, d_state) or (nseq, ...) with cu_seqlens.
        initial_conv_state: the inputs before token 0, (B, d_inner, d_conv - 1) (or the cache layout
        (B, d_inner, d_conv)); not with cu_seqlens. Other keyword arguments (meant for other mixers)
        are ignored. With ``inference_params`` the cached states are updated in place; past the
        prefix (seqlen_offset > 0) one token goes through ``step`` and several continue the cache.
        ``context_parallel`` (ssm.distributed.context_parallel): u is one rank's slice of a longer sequence.
        """
        flat = seqlen is not None
        u = hidden_states.unflatten(0, (-1, seqlen)) if flat else hidden_states
        cp = kwargs.get("context_parallel")
        if cp is not None:
            cp.check(inference_params, seq_idx, cu_seqlens)
            out = self._forward_cp(u, cp)
            return out.flatten(0, 1) if flat else out
        if cu_seqlens is not None and seq_idx is None:
            seq_idx = _states.seq_idx_from_cu_seqlens(cu_seqlens, u.shape[1])
        conv_state = ssm_state = None
        if inference_params is not None:
            batch = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else u.shape[0]
            conv_state, ssm_state = self._get_states_from_cache(inference_params, batch)
            if inference_params.seqlen_offset > 0:
                if u.shape[1] == 1 and cu_seqlens is None:
                    out = self.step(u, conv_state, ssm_state)[0]
                    return out.flatten(0, 1) if flat else out
                if cu_seqlens is not None:
                    raise ValueError("cu_seqlens: continuing cached sequences (seqlen_offset > 0) needs "
                                     "one row per sequence, not a packed batch")
                initial_state, initial_conv_state = ssm_state, conv_state
        out = self._forward(u, conv_state, ssm_state, seq_idx, cu_seqlens, initial_state, initial_conv_state)
        return out.flatten(0, 1) if flat else out

    def _forward(self, u, conv_state, ssm_state, seq_idx, cu_seqlens, initial_state, initial_conv_state):
        plain = (seq_idx is None and initial_state is None and initial_conv_state is None and conv_state is None)
        if self.use_fast_path and plain and self.in_proj.bias is None:
            # in_proj and the small parameters as they are (A as A_log) into the fused op, which computes xz, casts
            # them and returns their gradients: one autograd node for the layer body (host time on every layer of
            # a training forward)
            return ops.mamba_inner_fn(u, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                                      self.dt_proj.weight, self.out_proj.weight, self.out_proj.bias, self.A_log,
                                      None, None, self.D, delta_bias=self.dt_proj.bias, delta_softplus=True,
                                      checkpoint_lvl=CHECKPOINT_LVL, A_is_log=True,
                                      in_proj_weight=self.in_proj.weight)
        # xz (B, 2*d_inner, L), computed as W @ u^T so that L is the contiguous dimension
        Bsz, L, _ = u.shape
        xz = cpu_matmul.matmul(self.in_proj.weight, u.reshape(Bsz * L, -1).t()).view(-1, Bsz, L).permute(1, 0, 2)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(dtype=xz.dtype)[:, None]
        if self.use_fast_path and plain:
            return ops.mamba_inner_fn(xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                                      self.dt_proj.weight, self.out_proj.weight, self.out_proj.bias, self.A_log,
                                      None, None, self.D, delta_bias=self.dt_proj.bias, delta_softplus=True,
                                      checkpoint_lvl=CHECKPOINT_LVL, A_is_log=True)
        A = _states.decode_A(self)
        x, z = xz.chunk(2, dim=1)
        x_conv = self._conv(x, seq_idx, cu_seqlens, initial_conv_state)
        if conv_state is not None:
            self._save_conv_state(x, conv_state, cu_seqlens, initial_conv_state)
        # x_dbl (B, L, dt_rank + 2N); dt (B, d_inner, L); B, C (B, N, L)
        # contiguous matmul inputs: a bf16 matmul of a transposed or column-sliced input is ~10x slower
        x_dbl = cpu_matmul.linear(x_conv.transpose(1, 2).contiguous(), self.x_proj.weight)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = cpu_matmul.linear(dt.contiguous(), self.dt_proj.weight).transpose(1, 2)
        y = ops.selective_scan(x_conv, dt, A, B.transpose(1, 2), C.transpose(1, 2), self.D.float(), z=z,
                               dt_bias=self.dt_proj.bias.float(), softplus=True,
                               return_last_state=ssm_state is not None, initial_state=initial_state,
                               seq_idx=None if cu_seqlens is not None else seq_idx, cu_seqlens=cu_seqlens)
        if ssm_state is not None:
            y, last_state = y
            ssm_state.copy_(last_state)
        return cpu_matmul.module_linear(self.out_proj, y.transpose(1, 2).contiguous())

    def _forward_cp(self, u, cp):
        """This rank's slice u (B, Ls, d_model) of a sequence split across ranks: the conv and SSM
        states of the slices before come through ``cp`` (ssm.distributed.context_parallel)."""
        # xz (B, 2*d_inner, Ls)
        xz = self.in_proj(u).transpose(1, 2)
        x, z = xz.chunk(2, dim=1)
        x = ops.dw_causal_conv(x, self.conv1d.weight, self.conv1d.bias, self.activation,
                               initial_states=cp.conv_states(x, self.d_conv - 1))
        dt, B, C = torch.split(F.linear(x.transpose(1, 2), self.x_proj.weight),
                               [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)
        A = -torch.exp(self.A_log.float())

        def run(initial_state):
            return ops.selective_scan(x, dt, A, B.transpose(1, 2), C.transpose(1, 2), self.D.float(), z=z,
                                      dt_bias=self.dt_proj.bias.float(), softplus=True, return_last_state=True,
                                      initial_state=initial_state)

        def decay():  # (B, d_inner, d_state): exp(A * sum_t softplus(dt_t + dt_bias))
            total = F.softplus(dt.float() + self.dt_proj.bias.float()[:, None]).sum(-1)
            return torch.exp(A * total[..., None])
        y = cp.scan(run, decay, (u.shape[0], self.d_inner, self.d_state), x)
        return self.out_proj(y.transpose(1, 2))

    def _conv(self, x, seq_idx, cu_seqlens, initial_conv_state):
        """silu(causal depthwise conv) of x (B, d_inner, L), continuing initial_conv_state if given."""
        init = None
        if initial_conv_state is not None:
            if cu_seqlens is not None:
                raise ValueError("initial_conv_state: not supported together with cu_seqlens (packed batch)")
            init = initial_conv_state[..., -(self.d_conv - 1):].to(x.dtype) if self.d_conv > 1 else None
        return ops.dw_causal_conv(x, self.conv1d.weight, self.conv1d.bias, self.activation,
                                  seq_idx=seq_idx, initial_states=init)

    def _save_conv_state(self, x, conv_state, cu_seqlens, prev):
        """conv_state <- the last d_conv raw conv inputs (per sequence with cu_seqlens)."""
        if cu_seqlens is not None:
            conv_state.copy_(_states.varlen_conv_windows(x[0], cu_seqlens, self.d_conv))
            return
        if prev is not None and prev.shape[-1] != self.d_conv:
            prev = F.pad(prev, (self.d_conv - prev.shape[-1], 0))
        conv_state.copy_(_states.conv_window(x, self.d_conv, prev))

    def step(self, hidden_states: Tensor, conv_state: Tensor, ssm_state: Tensor):
        """One decode step: hidden_states (B, 1, d_model) -> (out (B, 1, d_model), conv_state, ssm_state);
        both states are updated in place."""
        if hidden_states.shape[1] != 1:
            raise ValueError(f"hidden_states: step decodes one token at a time, got shape {tuple(hidden_states.shape)}")
        out = self._step_projected(small_linear(self.in_proj, hidden_states.squeeze(1)), conv_state, ssm_state)
        return out.unsqueeze(1), conv_state, ssm_state

    def step_prenorm(self, hidden_states: Tensor, residual: Tensor | None, norm: nn.Module, inference_params):
        """The decode step of a prenorm Block (ssm.modules.block) with its residual add + norm folded
        into in_proj: hidden_states, residual (B, 1, d_model) (residual float32 or None) ->
        (out (B, 1, d_model), residual_out (B, 1, d_model) float32); the cached states updated in place."""
        conv_state, ssm_state = self._get_states_from_cache(inference_params, hidden_states.shape[0])
        # on CUDA the conv update goes with in_proj (one kernel when norm_linear takes it); past batch 4 with x_proj
        batched = hidden_states.shape[0] > 4 and self._plain_projections()
        conv = ((conv_state, self.conv1d.weight, self.conv1d.bias, self.activation)
                if hidden_states.is_cuda and not batched else None)
        out = norm_linear(hidden_states.squeeze(1), None if residual is None else residual.squeeze(1), norm.weight,
                          norm.bias, self.in_proj, is_rms=isinstance(norm, ops.RMSNorm), eps=norm.eps, conv=conv)
        x_conv = out[2] if conv is not None else None
        return self._step_projected(out[0], conv_state, ssm_state, x_conv).unsqueeze(1), out[1].unsqueeze(1)

    def _step_projected(self, xz, conv_state, ssm_state, x_conv=None):
        """One token from its in_proj output (B, 2 * d_inner) -> out (B, d_model); x_conv (B, d_inner): the conv
        update already done (conv_state updated)."""
        x, z = xz.chunk(2, dim=-1)
        if xz.is_cpu and self._plain_projections():  # the inner part in one C++ call (batch <= 4, no autograd)
            y = _m1d.mamba1_decode(x, z, conv_state, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                                   self.dt_proj.weight, self.dt_proj.bias, _states.decode_A(self), self.D,
                                   ssm_state, self.activation)
            return small_linear(self.out_proj, y)
        # x (B, d_inner) the conv output; x_dbl (B, dt_rank + 2 d_state)
        if x_conv is not None:
            x_dbl, x = self._x_proj(x_conv), x_conv
        else:
            x = ops.causal_conv1d_update(x, conv_state, self.conv1d.weight, self.conv1d.bias, self.activation)
            x_dbl = self._x_proj(x)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        # dt_proj folded into the state step (one kernel on CUDA)
        y = proj_state_step(ssm_state, x, dt, self.dt_proj.weight, _states.decode_A(self), B, C, self.D, z=z,
                            dt_bias=self.dt_proj.bias, softplus=True, state_settled=True)  # after x_proj's kernel
        if y.is_cuda and y.shape[0] > 4 and type(self.out_proj) is nn.Linear:  # past batch 4: cublasLt's pick
            return batch_decode.lt_linear(y, self.out_proj.weight, self.out_proj.bias)
        return small_linear(self.out_proj, y)

    def _x_proj(self, x: Tensor) -> Tensor:
        """x_proj(x) for one token; past batch 4 on CUDA (plain x_proj) on batch_decode.narrow_linear's kernel."""
        if x.is_cuda and x.shape[0] > 4 and type(self.x_proj) is nn.Linear and self.x_proj.bias is None:
            return batch_decode.narrow_linear(x, self.x_proj.weight)
        return small_linear(self.x_proj, x)

    def _plain_projections(self) -> bool:
        """x_proj and dt_proj are plain nn.Linear layers (x_proj without bias), as mamba1_decode takes them."""
        return type(self.x_proj) is nn.Linear and self.x_proj.bias is None and type(self.dt_proj) is nn.Linear

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        """(conv_state (B, d_inner, d_conv), ssm_state (B, d_inner, d_state)), zeros; dtypes of
        conv1d.weight / dt_proj.weight unless ``dtype`` is given."""
        device = self.out_proj.weight.device
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device,
                                 dtype=self.conv1d.weight.dtype if dtype is None else dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device,
                                dtype=self.dt_proj.weight.dtype if dtype is None else dtype)
        return conv_state, ssm_state

    def _get_states_from_cache(self, inference_params, batch_size, initialize_states=False):
        return _states.layer_states(self, inference_params, batch_size, initialize_states)
