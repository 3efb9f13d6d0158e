"""Mamba-2 (SSD) mixer (``mamba_ssm.modules.mamba2.Mamba2``): same constructor, parameters,
initialization, inference cache and ``step``; computes through ``ssm.ops`` on every device.

Differences from the reference (docs/compat.md): ``step`` honours dt_limit, D_has_hdim and
ngroups > 1; cu_seqlens also separates sequences on the memory-efficient path; a cached prefix can
be continued with several tokens at once (chunked prefill); tensor-parallel (``process_group``), the
gated norm spans whole groups, so a split layer computes what one process does (docs/tensor_parallel.md)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssm import ops
from ssm.distributed.tensor_parallel import check_divisible, column_linear, row_linear
from ssm.modules import _states
from ssm.ops import batch_decode, cpu_matmul
from ssm.ops import conv_state_step as _css
from ssm.ops.conv_state_step import conv_state_step
from ssm.ops.norm_gemv import gated_norm_linear, norm_linear, small_linear

_NO_LIMIT = (0.0, float("inf"))


class Mamba2(nn.Module):
    def __init__(self, d_model, d_state=128, d_conv=4, conv_init=None, expand=2, headdim=64, d_ssm=None,
                 ngroups=1, A_init_range=(1, 16), D_has_hdim=False, rmsnorm=True, norm_before_gate=False,
                 dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4, dt_limit=(0.0, float("inf")), bias=False,
                 conv_bias=True, chunk_size=256, use_mem_eff_path=True, layer_idx=None, process_group=None,
                 sequence_parallel=True, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.conv_init = conv_init
        self.expand = expand
        self.process_group = process_group
        self.sequence_parallel = sequence_parallel
        self.world_size = 1 if process_group is None else process_group.size()
        self.local_rank = 0 if process_group is None else process_group.rank()
        self._set_sizes(headdim, d_ssm, ngroups)
        self.D_has_hdim = D_has_hdim
        self.rmsnorm = rmsnorm
        self.norm_before_gate = norm_before_gate
        self.dt_limit = tuple(dt_limit)
        self.activation = "silu"
        self.chunk_size = chunk_size
        self.use_mem_eff_path = use_mem_eff_path
        self.layer_idx = layer_idx

        # in_proj output: [z0, x0 (d_mlp each), z (d_ssm), x (d_ssm), B, C (ngroups*d_state each), dt (nheads)]
        d_in_proj = 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads
        self.in_proj = column_linear(self.d_model, d_in_proj, process_group, sequence_parallel, bias=bias,
                                     **factory_kwargs)
        conv_dim = self.d_ssm + 2 * self.ngroups * self.d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim, padding=d_conv - 1,
                                bias=conv_bias, **factory_kwargs)
        if self.conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -self.conv_init, self.conv_init)
        self.act = nn.SiLU()
        self._init_ssm_params(A_init_range, dt_min, dt_max, dt_init_floor, factory_kwargs)
        if self.rmsnorm:
            self.norm = ops.RMSNormGated(self.d_ssm, eps=1e-5, norm_before_gate=self.norm_before_gate,
                                         group_size=self.d_ssm // self.ngroups, **factory_kwargs)
        self.out_proj = row_linear(self.d_inner, self.d_model, process_group, sequence_parallel, bias=bias,
                                   **factory_kwargs)

    def _set_sizes(self, headdim, d_ssm, ngroups):
        ws = self.world_size
        d_ssm = self.expand * self.d_model if d_ssm is None else d_ssm
        if d_ssm % headdim:
            raise ValueError(f"headdim: d_ssm = {d_ssm} is not a multiple of headdim = {headdim}")
        # whole heads and groups on each rank
        check_divisible(self.process_group, **{"expand*d_model": self.expand * self.d_model}, d_ssm=d_ssm,
                        nheads=d_ssm // headdim, ngroups=ngroups)
        self.d_inner = (self.expand * self.d_model) // ws
        self.headdim = headdim
        self.d_ssm = d_ssm // ws
        self.ngroups = ngroups // ws
        self.nheads = self.d_ssm // self.headdim
        if (d_ssm // headdim) % ngroups:
            raise ValueError(f"ngroups: nheads = {d_ssm // headdim} is not a multiple of ngroups = {ngroups}")

    def _init_ssm_params(self, A_init_range, dt_min, dt_max, dt_init_floor, factory_kwargs):
        """dt_bias = softplus^-1 of a log-uniform dt in [dt_min, dt_max]; A ~ U(A_init_range); D = 1."""
        dt = torch.exp(torch.rand(self.nheads, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min))
        dt = torch.clamp(dt, min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.dt_bias._no_weight_decay = True
        if not (A_init_range[0] > 0 and A_init_range[1] >= A_init_range[0]):
            raise ValueError(f"A_init_range: expected 0 < low <= high, got {tuple(A_init_range)}")
        A = torch.empty(self.nheads, dtype=torch.float32, device=factory_kwargs["device"]).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype=factory_kwargs["dtype"]))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_ssm if self.D_has_hdim else self.nheads,
                                         device=factory_kwargs["device"]))
        self.D._no_weight_decay = True

    # ---- forward -----------------------------------------------------------------------------

    def forward(self, u: Tensor, seqlen: int | None = None, seq_idx: Tensor | None = None,
                cu_seqlens: Tensor | None = None, inference_params=None, **kwargs) -> Tensor:
        """u (B, L, d_model), or (B*L, d_model) with ``seqlen`` -> same shape.

        seq_idx (B, L) int32 / cu_seqlens (nseq+1,) (batch 1) keep packed sequences apart. With
        ``inference_params`` the cached states are updated in place (per sequence with cu_seqlens);
        past the prefix (seqlen_offset > 0) one token goes through ``step`` and several continue
        the cached states. ``context_parallel`` (ssm.distributed.context_parallel): u is one rank's
        slice of a longer sequence. Other keyword arguments (meant for other mixers) are ignored.
        Tensor-parallel with sequence_parallel: u and the output are this rank's share of the
        first dimension (of the B*L tokens when flat), as in mamba_ssm."""
        flat = seqlen is not None
        cp = kwargs.get("context_parallel")
        if cp is not None:
            cp.check(inference_params, seq_idx, cu_seqlens)
        conv_state = ssm_state = None
        continuing = False
        if inference_params is not None:
            self._check_decodable()
            u3 = u.unflatten(0, (-1, seqlen)) if flat else u
            batch = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else u3.shape[0]
            conv_state, ssm_state = self._get_states_from_cache(inference_params, batch)
            if inference_params.seqlen_offset > 0:
                if cu_seqlens is not None:
                    raise ValueError("cu_seqlens: continuing cached sequences (seqlen_offset > 0) needs "
                                     "one row per sequence, not a packed batch")
                if u3.shape[1] == 1:
                    out = self.step(u3, conv_state, ssm_state)[0]
                    return out.flatten(0, 1) if flat else out
                continuing = True
        if self._fused_in_proj(u, flat, cp, inference_params):
            # in_proj inside the fused op (its input and weight as they are): one autograd node for the layer body
            if cu_seqlens is not None and seq_idx is None:
                seq_idx = _states.seq_idx_from_cu_seqlens(cu_seqlens, u.shape[1])
            return self._forward_fused(u, seq_idx, self.in_proj.weight)
        # with sequence_parallel, in_proj gathers u along its first dimension
        zxbcdt = cpu_matmul.module_linear(self.in_proj, u)
        zxbcdt = zxbcdt.unflatten(0, (-1, seqlen)) if flat else zxbcdt
        if cp is not None:
            out = self._forward_cp(zxbcdt, cp)
            return self._reduce(out.flatten(0, 1) if flat else out)
        if cu_seqlens is not None and seq_idx is None:
            seq_idx = _states.seq_idx_from_cu_seqlens(cu_seqlens, zxbcdt.shape[1])
        if self.use_mem_eff_path and inference_params is None:
            out = self._forward_fused(zxbcdt, seq_idx)
        else:
            out = self._forward_unfused(zxbcdt, seq_idx, cu_seqlens, conv_state, ssm_state, continuing)
        return self._reduce(out.flatten(0, 1) if flat else out)

    def _fused_in_proj(self, u, flat, cp, inference_params) -> bool:
        """The fused path with in_proj inside the op: a plain in_proj (no bias, no tensor parallelism), a
        (B, L, d_model) input, no cache or context parallelism."""
        return (self.use_mem_eff_path and inference_params is None and cp is None and not flat and u.dim() == 3
                and type(self.in_proj) is nn.Linear and self.in_proj.bias is None and self.process_group is None)

    def _check_decodable(self):
        if self.process_group is not None and self.sequence_parallel:
            raise ValueError("sequence_parallel: decoding (inference_params, step) needs the input on every rank; "
                             "build the layer with sequence_parallel=False")

    def _out_bias(self):
        """out_proj's bias; under tensor parallelism it is added after the reduction (_reduce)."""
        return self.out_proj.bias if self.process_group is None else None

    def _reduce(self, out):
        """Tensor parallelism: sum the ranks' partial out_proj products (reduce-scatter along the
        first dimension with sequence_parallel) and add the bias."""
        return out if self.process_group is None else self.out_proj.reduce(out)

    def _dt_limit_kwargs(self):
        return {} if self.dt_limit == _NO_LIMIT else {"dt_limit": self.dt_limit}

    def _D(self):
        return self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D

    def _forward_fused(self, zxbcdt, seq_idx, in_proj_weight=None):
        # A_log and the other small parameters go to the fused op as they are (no autograd nodes of their own);
        # with in_proj_weight, zxbcdt is in_proj's input
        return ops.mamba_split_conv1d_scan_combined(
            zxbcdt, self.conv1d.weight, self.conv1d.bias, self.dt_bias, self.A_log, D=self._D(),
            chunk_size=self.chunk_size, seq_idx=seq_idx, activation=self.activation,
            rmsnorm_weight=self.norm.weight if self.rmsnorm else None,
            rmsnorm_eps=self.norm.eps if self.rmsnorm else 1e-6,
            outproj_weight=self.out_proj.weight, outproj_bias=self._out_bias(),
            headdim=None if self.D_has_hdim else self.headdim, ngroups=self.ngroups,
            norm_before_gate=self.norm_before_gate, A_is_log=True, in_proj_weight=in_proj_weight,
            **self._dt_limit_kwargs())

    def _split(self, zxbcdt):
        """zxbcdt (..., d_in_proj) -> z0, x0 (d_mlp), z (d_ssm), xBC (conv_dim), dt (nheads)."""
        gn = self.ngroups * self.d_state
        d_mlp = (zxbcdt.shape[-1] - 2 * self.d_ssm - 2 * gn - self.nheads) // 2
        return torch.split(zxbcdt, [d_mlp, d_mlp, self.d_ssm, self.d_ssm + 2 * gn, self.nheads], dim=-1)

    def _conv(self, xBC, seq_idx, cu_seqlens, conv_state, continuing):
        """silu(causal conv) of xBC (B, L, conv_dim), continuing the cached conv state when asked;
        the cache then holds the last d_conv raw inputs (per sequence with cu_seqlens)."""
        # x (B, conv_dim, L): raw conv input
        x = xBC.transpose(1, 2)
        init = conv_state[..., 1:].to(x.dtype) if continuing and self.d_conv > 1 else None
        out = ops.dw_causal_conv(x, self.conv1d.weight, self.conv1d.bias, self.activation,
                                 seq_idx=seq_idx, initial_states=init)
        if conv_state is not None and cu_seqlens is not None:
            conv_state.copy_(_states.varlen_conv_windows(x[0], cu_seqlens, self.d_conv))
        elif conv_state is not None:
            conv_state.copy_(_states.conv_window(x, self.d_conv, conv_state if continuing else None))
        return out.transpose(1, 2)

    def _forward_unfused(self, zxbcdt, seq_idx, cu_seqlens, conv_state, ssm_state, continuing):
        z0, x0, z, xBC, dt = self._split(zxbcdt)
        xBC_c = self._conv(xBC, seq_idx, cu_seqlens, conv_state, continuing)
        gn = self.ngroups * self.d_state
        x, B, C = torch.split(xBC_c, [self.d_ssm, gn, gn], dim=-1)
        A = -torch.exp(self.A_log.float())
        varlen_states = cu_seqlens is not None and ssm_state is not None
        y = ops.mamba_chunk_scan_combined(
            x.unflatten(-1, (self.nheads, self.headdim)), dt, A, B.unflatten(-1, (self.ngroups, self.d_state)),
            C.unflatten(-1, (self.ngroups, self.d_state)), chunk_size=self.chunk_size, D=self._D(),
            z=None if self.rmsnorm else z.unflatten(-1, (self.nheads, self.headdim)), dt_bias=self.dt_bias,
            dt_softplus=True, initial_states=ssm_state if continuing else None, seq_idx=seq_idx,
            cu_seqlens=cu_seqlens, return_final_states=ssm_state is not None and not varlen_states,
            return_varlen_states=varlen_states, **self._dt_limit_kwargs())
        if ssm_state is not None:
            y, last = y
            ssm_state.copy_(last)
        return self._output(y.flatten(-2), z, z0, x0)

    def _forward_cp(self, zxbcdt, cp):
        """This rank's slice (B, Ls, d_in_proj) of a sequence split across ranks: the conv and SSM
        states of the slices before come through ``cp`` (ssm.distributed.context_parallel)."""
        z0, x0, z, xBC, dt = self._split(zxbcdt)
        # xBC (B, conv_dim, Ls) raw conv input
        xBC = xBC.transpose(1, 2)
        xBC = ops.dw_causal_conv(xBC, self.conv1d.weight, self.conv1d.bias, self.activation,
                                 initial_states=cp.conv_states(xBC, self.d_conv - 1)).transpose(1, 2)
        gn, h, p, n = self.ngroups * self.d_state, self.nheads, self.headdim, self.d_state
        x, B, C = torch.split(xBC, [self.d_ssm, gn, gn], dim=-1)
        A = -torch.exp(self.A_log.float())

        def run(initial_states):
            return ops.mamba_chunk_scan_combined(
                x.unflatten(-1, (h, p)), dt, A, B.unflatten(-1, (self.ngroups, n)),
                C.unflatten(-1, (self.ngroups, n)), chunk_size=self.chunk_size, D=self._D(),
                z=None if self.rmsnorm else z.unflatten(-1, (h, p)), dt_bias=self.dt_bias, dt_softplus=True,
                initial_states=initial_states, return_final_states=True, **self._dt_limit_kwargs())

        def decay():  # (B, nheads, 1, 1): exp(A * sum_t clamp(softplus(dt_t + dt_bias), dt_limit))
            step = F.softplus(dt.float() + self.dt_bias.float()).clamp(*self.dt_limit)
            return torch.exp(A * step.sum(1))[..., None, None]
        y = cp.scan(run, decay, (zxbcdt.shape[0], h, p, n), x)
        return self._output(y.flatten(-2), z, z0, x0)

    def _output(self, y, z, z0, x0):
        """Gated norm, the gated-MLP channels (if d_ssm < d_inner), out_proj (this rank's part)."""
        if self.rmsnorm:
            y = self.norm(y, z)
        if z0.shape[-1] > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return F.linear(y, self.out_proj.weight, self._out_bias())

    # ---- decoding ----------------------------------------------------------------------------

    def step(self, hidden_states: Tensor, conv_state: Tensor, ssm_state: Tensor):
        """One decode step: hidden_states (B, 1, d_model) -> (out (B, 1, d_model), conv_state, ssm_state);
        both states are updated in place. Honours dt_limit, D_has_hdim and ngroups > 1."""
        self._check_decodable()
        if hidden_states.shape[1] != 1:
            raise ValueError(f"hidden_states: step decodes one token at a time, got shape {tuple(hidden_states.shape)}")
        out = self._step_projected(small_linear(self.in_proj, hidden_states.squeeze(1)), conv_state, ssm_state)
        return out.unsqueeze(1), conv_state, ssm_state

    def step_prenorm(self, hidden_states: Tensor, residual: Tensor | None, norm: nn.Module, inference_params):
        """The decode step of a prenorm Block (ssm.modules.block) with its residual add + norm folded
        into in_proj: hidden_states, residual (B, 1, d_model) (residual float32 or None) ->
        (out (B, 1, d_model), residual_out (B, 1, d_model) float32); the cached states updated in place."""
        self._check_decodable()
        conv_state, ssm_state = self._get_states_from_cache(inference_params, hidden_states.shape[0])
        zxbcdt, residual = norm_linear(hidden_states.squeeze(1), None if residual is None else residual.squeeze(1),
                                       norm.weight, norm.bias, self.in_proj, is_rms=isinstance(norm, ops.RMSNorm),
                                       eps=norm.eps)
        return self._step_projected(zxbcdt, conv_state, ssm_state).unsqueeze(1), residual.unsqueeze(1)

    def _step_projected(self, zxbcdt, conv_state, ssm_state):
        """One token from its in_proj output (B, d_in_proj) -> out (B, d_model)."""
        z0, x0, z, xBC, dt = self._split(zxbcdt)
        Bsz, h, p = xBC.shape[0], self.nheads, self.headdim
        # conv update + state step (one kernel on CUDA); per-head dt (B, h), A, D, dt_bias (h,)
        dt, dt_bias, softplus = self._step_dt(dt)
        D = self.D.view(h, p) if self.D_has_hdim else self.D
        if self._batch_conv(xBC, conv_state):
            y = self._step_batch(xBC, conv_state, ssm_state, dt, D, dt_bias, softplus, z)
            return self._reduce(self._step_output(y.reshape(Bsz, self.d_ssm), z, z0, x0))
        y = conv_state_step(xBC, conv_state, self.conv1d.weight, self.conv1d.bias, ssm_state, dt,
                            _states.decode_A(self), D, dt_bias, z=None if self.rmsnorm else z.view(Bsz, h, p),
                            ngroups=self.ngroups, activation=self.activation, dt_softplus=softplus,
                            states_settled=True)  # the kernel before is in_proj's
        return self._reduce(self._step_output(y.reshape(Bsz, self.d_ssm), z, z0, x0))

    def _batch_conv(self, xBC, conv_state) -> bool:
        """Past conv_state_step's fused batches on CUDA the conv update runs alone, on the channels-last cache
        (batch_decode), then the state step."""
        return xBC.is_cuda and xBC.shape[0] > _css.MAX_BATCH and conv_state.stride(1) == 1

    def _step_batch(self, xBC, conv_state, ssm_state, dt, D, dt_bias, softplus, z):
        """conv_state_step's composition for a large batch: the conv update kernel, then the state step."""
        Bsz, h, p, gn = xBC.shape[0], self.nheads, self.headdim, self.ngroups * self.d_state
        xBC = batch_decode.conv_update_cl(xBC, conv_state, self.conv1d.weight, self.conv1d.bias, self.activation)
        x, B, C = torch.split(xBC, [self.d_ssm, gn, gn], dim=-1)
        g = self.ngroups
        return ops.selective_state_step(ssm_state, x.view(Bsz, h, p), dt, _states.decode_A(self), B.view(Bsz, g, -1),
                                        C.view(Bsz, g, -1), D, None if self.rmsnorm else z.view(Bsz, h, p), dt_bias,
                                        softplus)

    def _step_output(self, y, z, z0, x0):
        """_output for one token: the gated norm and out_proj in one kernel on CUDA when nothing else
        (gated-MLP channels, tensor parallelism) sits between them."""
        if not self.rmsnorm or z0.shape[-1] > 0 or type(self.out_proj) is not nn.Linear:
            return self._output(y, z, z0, x0)
        return gated_norm_linear(y, z, self.norm.weight, self.out_proj.weight, self.out_proj.bias,
                                 group_size=self.norm.group_size, eps=self.norm.eps,
                                 norm_before_gate=self.norm_before_gate)

    def _step_dt(self, dt):
        """dt for the state update: raw with (dt_bias, softplus) for the kernel, or, with a
        dt_limit, already biased, softplus-ed (float32) and clamped here, in the activation dtype."""
        if self.dt_limit == _NO_LIMIT:
            return dt, self.dt_bias, True
        limited = F.softplus(dt.float() + self.dt_bias.float(), threshold=20.0).clamp(*self.dt_limit)
        return limited.to(dt.dtype), None, False

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        """(conv_state (B, conv_dim, d_conv) channels-last, ssm_state (B, nheads, headdim, d_state)), zeros;
        dtypes of conv1d.weight / in_proj.weight unless ``dtype`` is given."""
        device = self.out_proj.weight.device
        conv_state = torch.zeros(batch_size, self.d_conv, self.conv1d.weight.shape[0], device=device,
                                 dtype=self.conv1d.weight.dtype if dtype is None else dtype).transpose(1, 2)
        ssm_state = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device,
                                dtype=self.in_proj.weight.dtype if dtype is None else dtype)
        return conv_state, ssm_state

    def _get_states_from_cache(self, inference_params, batch_size, initialize_states=False):
        return _states.layer_states(self, inference_params, batch_size, initialize_states)
