"""A prenorm Block(Mamba2)'s decode step on the CPU as six prepared kernel calls (the stack plan of
ssm.models.cpu_decode): the add + norm (layer_norm_fwd), in_proj (gemv), the conv update of xBC
(dw_causal_conv_update), the state step (selective_state_step, per-head dt, A, D, dt_bias), the
gated RMSNorm (gated_norm_fwd) and out_proj (gemv) - the kernels ``Mamba2.step_prenorm`` reaches
through its ops on the CPU, with the same arguments, bound once on fixed buffers."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ssm import ops
from ssm.modules import _states
from ssm.modules.mamba2 import _NO_LIMIT, Mamba2
from ssm.ops import _kernels
from ssm.utils import dispatch


def plain(mixer) -> bool:
    """A Mamba2 mixer whose step is norm -> in_proj -> conv + state step -> gated norm -> out_proj
    with nothing in between (no gated-MLP channels, dt_limit, tensor parallelism or custom layers)."""
    m = mixer
    if type(m) is not Mamba2 or m.process_group is not None or not m.rmsnorm or m.dt_limit != _NO_LIMIT:
        return False
    if type(m.in_proj) is not nn.Linear or type(m.out_proj) is not nn.Linear or type(m.norm) is not ops.RMSNormGated:
        return False
    gn = m.ngroups * m.d_state
    return m.in_proj.weight.shape[0] == 2 * m.d_ssm + 2 * gn + m.nheads and m.activation in ("silu", "swish")


def _ok(m, hidden, conv_state, ssm_state) -> bool:
    act = hidden.dtype
    ws = (m.in_proj.weight, m.out_proj.weight)
    if any(w.dtype != act or w.stride(1) != 1 for w in ws) or conv_state.dtype != act:
        return False
    if ssm_state.dtype not in _kernels.DTYPE_CODES or m.conv1d.weight.shape[-1] - 1 > conv_state.shape[2]:
        return False
    mod = dispatch.cpu_module()
    return (dispatch.forced_backend() in (None, "cpu") and mod is not None
            and not (torch.is_grad_enabled() and any(p.requires_grad for p in m.parameters())))


def block_steps(layer, inference_params, hidden, residual, add_residual: bool) -> Optional[tuple[list, list]]:
    """([(kernel, args)], tensors to keep alive) of one block's step on the plan's hidden (B, d_model)
    and float32 residual buffers, or None when the kernels do not take it."""
    m, norm = layer.mixer, layer.norm
    batch, d_model = hidden.shape
    conv_state, ssm_state = m._get_states_from_cache(inference_params, batch)
    if not _ok(m, hidden, conv_state, ssm_state):
        return None
    H, P, N, G, d_ssm = m.nheads, m.headdim, m.d_state, m.ngroups, m.d_ssm
    conv_dim, d_in = d_ssm + 2 * G * N, m.in_proj.weight.shape[0]
    k, f32, r, mod = _kernels, _kernels.float32_param, _kernels.ref, dispatch.cpu_module()
    code, threads = k.dtype_code(hidden), k.cpu_threads
    # scratch: normed (B, d_model), zxbcdt (B, d_in), the conv output (B, conv_dim, 1), y (B, H, P), gated (B, d_ssm)
    normed, zxbcdt = k.empty((batch, d_model), hidden), k.empty((batch, d_in), hidden)
    xbc, y, gated = k.empty((batch, conv_dim, 1), hidden), k.empty((batch, H, P), hidden), k.empty((batch, d_ssm), hidden)
    nw, nb, in_b, out_b = (f32(t) for t in (norm.weight, getattr(norm, "bias", None), m.in_proj.bias, m.out_proj.bias))
    cw, cb = f32(m.conv1d.weight), f32(m.conv1d.bias)
    cw = cw.reshape(cw.shape[0], cw.shape[-1])
    A, D, dt_bias, gw = _states.decode_A(m), f32(m._D()), f32(m.dt_bias), f32(m.norm.weight)
    x_in = zxbcdt[:, d_ssm:d_ssm + conv_dim].unsqueeze(-1)
    x, B, C = (xbc[:, a:b, 0] for a, b in ((0, d_ssm), (d_ssm, d_ssm + G * N), (d_ssm + G * N, conv_dim)))
    x, B, C = x.view(batch, H, P), B.view(batch, G, N), C.view(batch, G, N)
    dt = zxbcdt[:, d_ssm + conv_dim:]
    # tied per-head forms as stride-0 views (selective_state_step's UNIT_* modes)
    dt_ref = (dt.data_ptr(), dt.stride(0), dt.stride(1), 0)
    A_ref = (A.data_ptr(), A.stride(0), 0, 0)
    D_ref = (D.data_ptr(), D.stride(0), 0) if D.dim() == 1 else r(D)
    bias_ref = (dt_bias.data_ptr(), dt_bias.stride(0), 0)
    z = zxbcdt[:, :d_ssm]
    group = m.norm.group_size or d_ssm
    steps = [
        (mod.layer_norm_fwd, (batch, d_model, code, r(hidden), r(nw), r(nb), 0 if add_residual else None,
                              r(residual) if add_residual else None, 0, r(normed), r(residual), float(norm.eps),
                              isinstance(norm, ops.RMSNorm), threads(batch * d_model))),
        (mod.gemv, (code, batch, d_model, d_in, r(normed), r(m.in_proj.weight), r(in_b), r(zxbcdt),
                    k.exec_arg("cpu", m.in_proj.weight))),
        (mod.dw_causal_conv_update, (code, batch, conv_dim, 1, cw.shape[-1], conv_state.shape[0], conv_state.shape[2],
                                     r(x_in), r(conv_state), r(cw), r(cb), None, None, r(xbc), True,
                                     threads(batch * conv_dim))),
        (mod.selective_state_step, (k.dtype_code(ssm_state), code, batch, H, P, N, G, r(ssm_state), r(x), dt_ref,
                                    A_ref, r(B), r(C), D_ref, None, bias_ref, None, r(y), True,
                                    threads(batch * H * P * N))),
        (mod.gated_norm_fwd, (batch, d_ssm, group, code, (y.data_ptr(), d_ssm, 1), r(gw), None, code,
                              (z.data_ptr(), z.stride(0), z.stride(1)), r(gated), float(m.norm.eps),
                              bool(m.norm.norm_before_gate), True, threads(batch * d_ssm))),
        (mod.gemv, (code, batch, d_ssm, d_model, r(gated), r(m.out_proj.weight), r(out_b), r(hidden),
                    k.exec_arg("cpu", m.out_proj.weight))),
    ]
    return steps, [normed, zxbcdt, xbc, y, gated, nw, nb, in_b, out_b, cw, cb, A, D, dt_bias, gw]
