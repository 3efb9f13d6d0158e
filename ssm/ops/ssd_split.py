"""Mamba-2's fused block path, ``mamba_split_conv1d_scan_combined``: split the in-projection
output, causal conv on xBC, SSD scan, gated RMSNorm, out-projection; no channel-count restriction.

One custom op pair: the forward calls the conv, SSD scan and gated-norm custom ops (so whatever
kernel each backend has) and torch matmuls; autograd saves only the inputs, and the backward
recomputes the conv output, the scan output and the norm before calling the ops' backwards."""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ssm.ops import _checks, _kernels, _library, conv, cpu_matmul
from ssm.ops.conv import _bwd_op as _conv_bwd, _fwd_op as _conv_fwd
from ssm.ops.gated_norm import _bwd_op as _gated_norm_bwd, _fwd_op as _gated_norm_fwd
from ssm.ops.python import reference
from ssm.ops.ssd import _bwd_op as _ssd_bwd, _check_dt_limit, _fwd_op as _ssd_fwd

_INF = float("inf")
# Under autograd the forward keeps the scan output y (B, L, dim) for the backward, as mamba_ssm
# keeps out_x: the backward then runs no forward scan (SSM_SPLIT_KEEP_Y=0: recompute it).
KEEP_Y = os.environ.get("SSM_SPLIT_KEEP_Y", "1") != "0"
_ACTIVATIONS = (None, "silu", "swish")


def _split_sizes(zxbcdt, conv1d_weight, A, D, headdim, ngroups, in_proj_weight=None):
    """(d_nonssm, dim, dstate, nheads, headdim) of the zxbcdt layout [zx0, z, xBC, dt] (zxbcdt = in_proj's
    output, given or, with in_proj_weight, its input)."""
    _checks.tensor("zxbcdt", zxbcdt, ndim=3)
    if in_proj_weight is not None:
        _checks.tensor("in_proj_weight", in_proj_weight, shape=(None, zxbcdt.shape[-1]), device=zxbcdt.device)
    width = zxbcdt.shape[-1] if in_proj_weight is None else in_proj_weight.shape[0]
    _checks.tensor("conv1d_weight", conv1d_weight, ndim=(2, 3), device=zxbcdt.device)
    _checks.tensor("A", A, ndim=1, device=zxbcdt.device)
    _checks.tensor("D", D, ndim=(1, 2), device=zxbcdt.device)
    _checks.positive_int("ngroups", ngroups)
    nheads = A.shape[0]
    if D.dim() == 1 and headdim is None:
        raise ValueError("headdim: needed when D has shape (nheads,)")
    headdim = D.shape[1] if D.dim() == 2 else headdim
    _checks.positive_int("headdim", headdim)
    dim = nheads * headdim
    conv_dim = conv1d_weight.shape[0]
    if (conv_dim - dim) <= 0 or (conv_dim - dim) % (2 * ngroups) != 0:
        raise ValueError(f"conv1d_weight: {conv_dim} channels do not hold x ({dim}) plus B and C "
                         f"for {ngroups} groups")
    dstate = (conv_dim - dim) // (2 * ngroups)
    rest = width - 2 * dim - 2 * ngroups * dstate - nheads
    if rest < 0 or rest % 2 != 0:
        name = "zxbcdt: last dim" if in_proj_weight is None else "in_proj_weight: rows"
        raise ValueError(f"{name} {width} does not split into [zx0, z ({dim}), xBC ({conv_dim}), dt ({nheads})]")
    return rest // 2, dim, dstate, nheads, headdim


def _swiglu_prepend(zx0: Tensor, out: Tensor, d_nonssm: int) -> Tensor:
    # zx0 (B, L, 2 d_nonssm): silu(first half) * second half, placed before the SSM output
    if d_nonssm == 0:
        return out
    return torch.cat([F.silu(zx0[..., :d_nonssm]) * zx0[..., d_nonssm:], out], dim=-1)


# ---- fused path: one custom op pair; the backward recomputes the conv, the scan and the norm ----

def _split(zxbcdt, sizes):
    """zxbcdt (B, L, T) -> views zx0 (2 d_nonssm), z (dim), xBC (dim + 2 G N), dt (H)."""
    d_nonssm, dim, gn, nheads = sizes
    return torch.split(zxbcdt, [2 * d_nonssm, dim, dim + 2 * gn, nheads], dim=-1)


def _conv_view(t):
    # (B, L, channels) -> the (B, channels, L) view the conv takes: as is where the conv keeps the
    # channels-last layout (CUDA, conv.CHANNELS_LAST_DEVICES), else a contiguous copy (the CPU kernels run along L)
    v = t.transpose(1, 2)
    return v if t.device.type in conv.CHANNELS_LAST_DEVICES else v.contiguous()


def _conv(xBC, w, b, seq_idx, silu):
    # xBC (B, L, channels) -> conv over L, as a (B, L, channels) view of the (B, channels, L) output
    return _conv_fwd(_conv_view(xBC), w, b, seq_idx, None, silu, False)[0].transpose(1, 2)


def _scan_args(xBCc, z, dt, sizes, headdim, ngroups, gated):
    """x (B, L, H, P), dt float32 (B, L, H), B, C (B, L, G, N), z (B, L, H, P) or None: views."""
    _, dim, gn, nheads = sizes
    batch, L, _ = xBCc.shape
    x, B, C = torch.split(xBCc, [dim, gn, gn], dim=-1)
    acc = torch.float64 if xBCc.dtype == torch.float64 else torch.float32
    return (x.reshape(batch, L, nheads, headdim), dt.to(acc), B.reshape(batch, L, ngroups, -1),
            C.reshape(batch, L, ngroups, -1), z.reshape(batch, L, nheads, headdim) if gated else None)


def _ssm_out(zxbcdt, conv_w, conv_b, dt_bias, A, D, initial_states, seq_idx, norm_w, sizes, cfg, return_final,
             y=None):
    """Recomputable part of the forward: (xBC conv input, conv output, scan args, scan output y
    (B, L, dim), normed output or y, final states); a given y (the forward's) skips the scan."""
    chunk_size, dt_lo, dt_hi, silu, eps, headdim, ngroups, norm_before_gate = cfg
    zx0, z, xBC, dt = _split(zxbcdt, sizes)
    xBCc = _conv(xBC, conv_w, conv_b, seq_idx, silu)
    sargs = _scan_args(xBCc, z, dt, sizes, headdim, ngroups, norm_w is None)
    x, dt32, B, C, zs = sargs
    final = None
    if y is None:
        y, final, _ = _ssd_fwd(x, dt32, A, B, C, D, zs, dt_bias, initial_states, seq_idx, None, chunk_size, True,
                               dt_lo, dt_hi, return_final, False)
        y = y.reshape(zxbcdt.shape[0], zxbcdt.shape[1], -1)
    yn = y if norm_w is None else _norm(y, z, norm_w, sizes, cfg)
    return xBC, xBCc, sargs, y, yn, final


def _norm(y, z, norm_w, sizes, cfg):
    # y, z (B, L, dim) -> gated RMSNorm over groups of dim / G
    eps, ngroups, norm_before_gate = cfg[4], cfg[6], cfg[7]
    dim = sizes[1]
    out = _gated_norm_fwd(y.reshape(-1, dim), norm_w, None, z.reshape(-1, dim), eps, dim // ngroups,
                          norm_before_gate, True)
    return out.view(y.shape)


def _with_swiglu(zx0, yn, d_nonssm):
    # [silu(zx0[:d]) * zx0[d:], yn] along the last dim
    if d_nonssm == 0:
        return yn
    return torch.cat([F.silu(zx0[..., :d_nonssm]) * zx0[..., d_nonssm:], yn], dim=-1)


def _kernel_params(zxbcdt, conv_w, conv_b, dt_bias, A, D, norm_w, headdim, a_log):
    """The small parameters, which the fused op takes in their own dtypes and shapes (no cast nodes under
    autograd), as the kernels take them: float32 (float64 for float64 zxbcdt) contiguous, kept copies
    (_kernels.small_param); conv_w as (channels, W); A = -exp(A) when a_log (A is A_log); D as (H, P)."""
    par = torch.float64 if zxbcdt.dtype == torch.float64 else torch.float32

    def p(t):
        return _kernels.small_param(t, par)
    A = _kernels.derived_param(A, ("neg_exp", par), lambda t: -torch.exp(t.to(par))) if a_log else p(A)
    nheads = A.shape[0]
    return (p(conv_w).reshape(conv_w.shape[0], -1), p(conv_b), p(dt_bias), A,
            p(D).reshape(nheads, -1).expand(nheads, headdim), p(norm_w))


def _param_grads(params, grads, A_f, a_log):
    """The small parameters' gradients (float32, the kernels' shapes) in each parameter's shape and dtype:
    D's summed over the head dim when D is (H,), A's to A_log (d A_log = dA * A) when a_log. params / grads:
    conv_w, conv_b, dt_bias, A, D, norm_w."""
    out = []
    for i, (t, g) in enumerate(zip(params, grads)):
        if t is None or g is None:
            out.append(None)
            continue
        if i == 3 and a_log:
            g = g * A_f
        if i == 4 and t.dim() == 1:  # (the sum autograd's expand of D did)
            g = g.sum(1)
        out.append(g.reshape(t.shape).to(t.dtype))
    return out


def _fused_fwd(zxbcdt, conv_w, conv_b, dt_bias, A, D, initial_states, seq_idx, norm_w, out_w, out_b, in_w, sizes,
               cfg, return_final, keep_y=False, a_log=False):
    """(out, final states or empty, the scan output y (B, L, dim) for the backward with keep_y, else empty,
    zxbcdt when in_w is given, else empty); the small parameters in their own dtypes and shapes
    (_kernel_params). With in_w the first argument is in_proj's input u (B, L, d_model) and zxbcdt =
    u in_w^T (the GEMM F.linear runs)."""
    zxbcdt = zxbcdt if in_w is None else cpu_matmul.linear(zxbcdt, in_w)
    conv_w, conv_b, dt_bias, A, D, norm_w = _kernel_params(zxbcdt, conv_w, conv_b, dt_bias, A, D, norm_w, cfg[5],
                                                           a_log)
    _, _, _, y, yn, final = _ssm_out(zxbcdt, conv_w, conv_b, dt_bias, A, D, initial_states, seq_idx, norm_w,
                                     sizes, cfg, return_final)
    out = _with_swiglu(zxbcdt[..., :2 * sizes[0]], yn, sizes[0])
    out = out if out_w is None else cpu_matmul.linear(out, out_w, out_b)
    return (out.contiguous(), _library.empty_if_none(final if return_final else None, zxbcdt),
            y if keep_y else zxbcdt.new_empty(0), zxbcdt if in_w is not None else zxbcdt.new_empty(0))


@_library.custom_op("ssm::split_conv1d_scan_fwd", mutates_args=())
def _fwd_op(zxbcdt: Tensor, conv_w: Tensor, conv_b: Optional[Tensor], dt_bias: Optional[Tensor], A: Tensor,
            D: Tensor, initial_states: Optional[Tensor], seq_idx: Optional[Tensor], norm_w: Optional[Tensor],
            out_w: Optional[Tensor], out_b: Optional[Tensor], in_w: Optional[Tensor], sizes: list[int],
            chunk_size: int, dt_lo: float, dt_hi: float, silu: bool, eps: float, headdim: int, ngroups: int,
            norm_before_gate: bool, return_final: bool, keep_y: bool,
            a_log: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    cfg = (chunk_size, dt_lo, dt_hi, silu, eps, headdim, ngroups, norm_before_gate)
    return _fused_fwd(zxbcdt, conv_w, conv_b, dt_bias, A, D, initial_states, seq_idx, norm_w, out_w, out_b, in_w,
                      tuple(sizes), cfg, return_final, keep_y, a_log)


@_fwd_op.register_fake
def _(zxbcdt, conv_w, conv_b, dt_bias, A, D, initial_states, seq_idx, norm_w, out_w, out_b, in_w, sizes,
      chunk_size, dt_lo, dt_hi, silu, eps, headdim, ngroups, norm_before_gate, return_final, keep_y, a_log):
    batch, L, _ = zxbcdt.shape
    kept = zxbcdt.new_empty(0) if in_w is None else zxbcdt.new_empty((batch, L, in_w.shape[0]))
    d_nonssm, dim, gn, nheads = sizes
    width = d_nonssm + dim if out_w is None else out_w.shape[0]
    state = torch.float64 if zxbcdt.dtype == torch.float64 else torch.float32
    final = (zxbcdt.new_empty((batch, nheads, headdim, gn // ngroups), dtype=state) if return_final
             else zxbcdt.new_empty(0))
    return zxbcdt.new_empty((batch, L, width)), final, zxbcdt.new_empty((batch, L, dim) if keep_y else 0), kept


def _swiglu_bwd(zx0, dsw, d_nonssm):
    # d of silu(a) * b with a, b the halves of zx0 (B, L, 2 d_nonssm)
    if d_nonssm == 0:
        return zx0
    a, b = zx0[..., :d_nonssm], zx0[..., d_nonssm:]
    sig = torch.sigmoid(a)
    return torch.cat([dsw * b * sig * (1 + a * (1 - sig)), dsw * a * sig], dim=-1)


def _out_grads(dout, cat, out_w, out_b):
    """Through out_proj: d cat (B, L, width), d out_w, d out_b (None when absent)."""
    if out_w is None:
        return dout, None, None
    d2 = dout.reshape(-1, dout.shape[-1])
    dw = cpu_matmul.matmul(d2.t(), cat.reshape(-1, cat.shape[-1]))
    return cpu_matmul.matmul(d2, out_w).view(cat.shape), dw, None if out_b is None else d2.sum(0)


def _fused_bwd(zxbcdt, conv_w, conv_b, dt_bias, A, D, initial_states, seq_idx, norm_w, out_w, out_b, in_w, sizes,
               cfg, return_final, y_saved, zxbcdt_kept, dout, dfinal, a_log=False):
    """Gradients of every input (the small parameters' in their own shapes and dtypes; with in_w, d u first
    and d in_w last, zxbcdt being u and zxbcdt_kept the forward's in_proj output)."""
    u, zxbcdt = (None, zxbcdt) if in_w is None else (zxbcdt, zxbcdt_kept)
    params = (conv_w, conv_b, dt_bias, A, D, norm_w)
    conv_w, conv_b, dt_bias, A, D, norm_w = _kernel_params(zxbcdt, *params, cfg[5], a_log)
    d_nonssm, dim, gn, nheads = sizes
    chunk_size, dt_lo, dt_hi, silu, eps, _, ngroups, norm_before_gate = cfg
    batch, L, _ = zxbcdt.shape
    zx0, z, _, dt = _split(zxbcdt, sizes)
    xBC, xBCc, (x, dt32, B, C, zs), y, yn, _ = _ssm_out(zxbcdt, conv_w, conv_b, dt_bias, A, D, initial_states,
                                                         seq_idx, norm_w, sizes, cfg, False,
                                                         y_saved if y_saved.numel() else None)
    dcat, d_out_w, d_out_b = _out_grads(dout, _with_swiglu(zx0, yn, d_nonssm), out_w, out_b)
    dzx0 = _swiglu_bwd(zx0, dcat[..., :d_nonssm], d_nonssm)
    dy, d_norm_w, dz = dcat[..., d_nonssm:], None, None
    if norm_w is not None:
        dy, d_norm_w, _, dz = _gated_norm_bwd(y.reshape(-1, dim), norm_w, None, z.reshape(-1, dim),
                                              dy.reshape(-1, dim), eps, dim // ngroups, norm_before_gate, True)
    dx, ddt, dA, dB, dC, dD, dzs, d_dt_bias, dinit = _ssd_bwd(
        x, dt32, A, B, C, D, zs, dt_bias, initial_states, seq_idx, None, dy.reshape(x.shape), dfinal,
        zxbcdt.new_empty(0), chunk_size, True, dt_lo, dt_hi, return_final, False)
    # d conv output (B, L, channels)
    dxBCc = torch.cat([dx.reshape(batch, L, dim), dB.reshape(batch, L, gn), dC.reshape(batch, L, gn)], -1)
    dxBC, d_conv_w, d_conv_b, _ = _conv_bwd(_conv_view(xBC), conv_w, conv_b, seq_idx, None, _conv_view(dxBCc),
                                            zxbcdt.new_empty(0), silu, False)
    dz = dzs.reshape(batch, L, dim) if norm_w is None else dz.view(batch, L, dim)
    dzxbcdt = torch.cat([dzx0, dz.to(zxbcdt.dtype), dxBC.transpose(1, 2), ddt.to(zxbcdt.dtype)], -1)
    d_conv_w, d_conv_b, d_dt_bias, dA, dD, d_norm_w = _param_grads(
        params, (d_conv_w, d_conv_b, d_dt_bias, dA, dD, d_norm_w), A, a_log)
    first, d_in_w = (dzxbcdt, None) if in_w is None else _in_proj_grads(dzxbcdt, u, in_w)
    grads = (first, d_conv_w, d_conv_b, d_dt_bias, dA, dD, dinit, d_norm_w, d_out_w, d_out_b, d_in_w)
    return [_library.empty_if_none(g, zxbcdt) for g in grads]


def _in_proj_grads(dzxbcdt, u, in_w):
    """d u (B, L, d_model) and d in_w of zxbcdt = u in_w^T: the two GEMMs autograd's MmBackward runs for
    F.linear (same operands and layouts: d in_w = dz^T u, in_w^T being column-major)."""
    dz2 = dzxbcdt.reshape(-1, dzxbcdt.shape[-1])
    du = cpu_matmul.matmul(dz2, in_w).view(u.shape)
    return du, cpu_matmul.matmul(dz2.t(), u.reshape(dz2.shape[0], -1))


@_library.custom_op("ssm::split_conv1d_scan_bwd", mutates_args=())
def _bwd_op(zxbcdt: Tensor, conv_w: Tensor, conv_b: Optional[Tensor], dt_bias: Optional[Tensor], A: Tensor,
            D: Tensor, initial_states: Optional[Tensor], seq_idx: Optional[Tensor], norm_w: Optional[Tensor],
            out_w: Optional[Tensor], out_b: Optional[Tensor], in_w: Optional[Tensor], sizes: list[int],
            chunk_size: int, dt_lo: float, dt_hi: float, silu: bool, eps: float, headdim: int, ngroups: int,
            norm_before_gate: bool, return_final: bool, keep_y: bool, a_log: bool, y_saved: Tensor,
            zxbcdt_kept: Tensor, dout: Tensor, dfinal: Tensor) -> list[Tensor]:
    cfg = (chunk_size, dt_lo, dt_hi, silu, eps, headdim, ngroups, norm_before_gate)
    grads = _fused_bwd(zxbcdt, conv_w, conv_b, dt_bias, A, D, initial_states, seq_idx, norm_w, out_w, out_b, in_w,
                       tuple(sizes), cfg, return_final, y_saved, zxbcdt_kept, dout, dfinal, a_log)
    return list(_library._unalias(grads, (zxbcdt, y_saved, zxbcdt_kept, dout, dfinal)))


@_bwd_op.register_fake
def _(zxbcdt, conv_w, conv_b, dt_bias, A, D, initial_states, seq_idx, norm_w, out_w, out_b, in_w, *rest):
    def like(t):
        return zxbcdt.new_empty(0) if t is None else _library.empty_like(t)
    return [like(t) for t in (zxbcdt, conv_w, conv_b, dt_bias, A, D, initial_states, norm_w, out_w, out_b, in_w)]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:12], output[2], output[3])
    ctx.mark_non_differentiable(output[2], output[3])
    # y and the kept zxbcdt get no gradient: no zero tensors of their size materialized (an absent dout or
    # dfinal is None)
    ctx.set_materialize_grads(False)
    ctx.flags = inputs[12:]
    ctx.out_shape = output[0].shape


def _backward(ctx, dout, dfinal, _dy, _dzxbcdt):
    *saved, y_saved, zxbcdt_kept = ctx.saved_tensors
    return_final = ctx.flags[-3]
    dfinal = saved[0].new_empty(0) if dfinal is None or not return_final else dfinal.contiguous()
    dout = saved[0].new_zeros(ctx.out_shape) if dout is None else dout.contiguous()
    grads = _bwd_op(*saved, *ctx.flags, y_saved, zxbcdt_kept, dout, dfinal)
    tensors = saved[:7] + saved[8:12]
    grads = [None if t is None else g for t, g in zip(tensors, grads)]
    return (*grads[:7], None, *grads[7:]) + (None,) * len(ctx.flags)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ---- public ----------------------------------------------------------------------------------

def _autocast_out(zxbcdt, out_w, out_b, in_w):
    """Under autocast, in_proj and out_proj (and so the path) run in the autocast dtype, as F.linear would."""
    if (out_w is None and in_w is None) or not torch.is_autocast_enabled(zxbcdt.device.type):
        return zxbcdt, out_w, out_b, in_w
    dtype = torch.get_autocast_dtype(zxbcdt.device.type)
    return tuple(None if t is None else t.to(dtype) for t in (zxbcdt, out_w, out_b, in_w))


def mamba_split_conv1d_scan_combined(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size,
                                     initial_states=None, seq_idx=None, dt_limit=(0.0, _INF),
                                     return_final_states=False, activation="silu", rmsnorm_weight=None,
                                     rmsnorm_eps=1e-6, outproj_weight=None, outproj_bias=None, headdim=None,
                                     ngroups=1, norm_before_gate=True, state_dtype=None, *, A_is_log=False,
                                     in_proj_weight=None):
    """``mamba_ssm``'s fused Mamba-2 path. zxbcdt (B, L, 2 d_nonssm + 2 dim + 2 G N + H) ->
    out (B, L, d_out) [, final_states (B, H, P, N) float32]. ``initial_states`` (B, H, P, N),
    ``seq_idx`` (B, L) as in :func:`ssd_chunk_scan`. ``state_dtype`` is accepted for
    compatibility: states stay float32 here. The small parameters (conv, dt_bias, A, D, norm weight) go to
    the fused op as they are: cast inside, their gradients in their own dtypes (no autograd nodes of their
    own). ``A_is_log``: A holds A_log (a Mamba2 module's parameter) and A = -exp(A_log) is computed inside
    the op (once per parameter update), its gradient going to A_log. ``in_proj_weight`` (width, d_model): zxbcdt
    is in_proj's input u (B, L, d_model) instead and zxbcdt = u in_proj_weight^T is computed inside the op (a
    Mamba2 module's layer body as one autograd node)."""
    d_nonssm, dim, dstate, nheads, headdim, dt_lo, dt_hi = _checked_sizes(
        (zxbcdt, conv1d_weight, A, D, initial_states, seq_idx, in_proj_weight),
        (activation, headdim, ngroups, chunk_size, dt_limit))
    zxbcdt, outproj_weight, outproj_bias, in_w = _autocast_out(zxbcdt, outproj_weight, outproj_bias,
                                                               in_proj_weight)
    par = torch.float64 if zxbcdt.dtype == torch.float64 else torch.float32
    init = None if initial_states is None else initial_states.to(par).contiguous()
    tensors = (zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, init, seq_idx, rmsnorm_weight, outproj_weight,
               outproj_bias, in_w)
    sizes = [d_nonssm, dim, ngroups * dstate, nheads]
    cfg = (int(chunk_size), dt_lo, dt_hi, activation is not None, float(rmsnorm_eps), headdim, ngroups,
           bool(norm_before_gate))
    with _library.autocast_off(zxbcdt.device.type):
        if _library.use_custom_op(*tensors):
            out, final, _, _ = _fwd_op(*tensors, sizes, *cfg, bool(return_final_states), KEEP_Y, bool(A_is_log))
        else:
            out, final, _, _ = _fused_fwd(*tensors, tuple(sizes), cfg, bool(return_final_states), False,
                                          bool(A_is_log))
    return (out, final) if return_final_states else out


# The sizes of calls whose arguments passed the checks, found by a call's metadata (the checks depend on nothing
# else): a repeated call (every layer) skips them.
_checked = _kernels.PlanCache()


def _checked_sizes(tensors, args):
    """_check_args' sizes, kept for a repeated call's metadata."""
    # (the scalars' types in the key too: a bool is no chunk size, though True == 1)
    sig, sizes = (None, None) if torch.compiler.is_compiling() else _checked.find((*args, *map(type, args)), tensors)
    if sizes:
        return sizes
    sizes = _check_args(tensors, args)
    if sig is not None:
        _checked[sig] = sizes
    return sizes


def _check_args(tensors, args):
    """(d_nonssm, dim, dstate, nheads, headdim, dt_lo, dt_hi) of mamba_split_conv1d_scan_combined's arguments:
    tensors (zxbcdt, conv1d_weight, A, D, initial_states, seq_idx, in_proj_weight), args (activation, headdim,
    ngroups, chunk_size, dt_limit); a ValueError / TypeError naming the argument that does not fit."""
    zxbcdt, conv1d_weight, A, D, initial_states, seq_idx, in_proj_weight = tensors
    activation, headdim, ngroups, chunk_size, dt_limit = args
    _checks.choice("activation", activation, _ACTIVATIONS)
    d_nonssm, dim, dstate, nheads, headdim = _split_sizes(zxbcdt, conv1d_weight, A, D, headdim, ngroups,
                                                          in_proj_weight)
    batch, L, _ = zxbcdt.shape
    _checks.positive_int("chunk_size", chunk_size)
    _checks.tensor("initial_states", initial_states, shape=(batch, nheads, headdim, dstate), device=zxbcdt.device,
                   optional=True)
    _checks.seq_idx(seq_idx, batch, L, zxbcdt.device)
    return (d_nonssm, dim, dstate, nheads, headdim, *_check_dt_limit(dt_limit))


def mamba_split_conv1d_scan_ref(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size,
                                dt_limit=(0.0, _INF), activation="silu", rmsnorm_weight=None, rmsnorm_eps=1e-6,
                                outproj_weight=None, outproj_bias=None, headdim=None, ngroups=1,
                                norm_before_gate=True, *, initial_states=None, seq_idx=None,
                                return_final_states=False):
    """``mamba_ssm``'s unfused reference of the same path, from the reference ops only (plus, beyond
    it, ``initial_states``, ``seq_idx`` and ``return_final_states``)."""
    _checks.choice("activation", activation, _ACTIVATIONS)
    d_nonssm, dim, dstate, nheads, headdim = _split_sizes(zxbcdt, conv1d_weight, A, D, headdim, ngroups)
    batch, L, _ = zxbcdt.shape
    gn = ngroups * dstate
    zx0, z, xBC, dt = torch.split(zxbcdt, [2 * d_nonssm, dim, dim + 2 * gn, nheads], dim=-1)
    weight = conv1d_weight.reshape(conv1d_weight.shape[0], -1)
    xBC = reference.dw_causal_conv(xBC.transpose(1, 2), weight, conv1d_bias, "silu" if activation else None,
                                   seq_idx=seq_idx).transpose(1, 2)
    x, B, C = torch.split(xBC, [dim, gn, gn], dim=-1)
    out = reference.ssd_chunk_scan(x.reshape(batch, L, nheads, headdim), dt, A,
                                   B.reshape(batch, L, ngroups, dstate), C.reshape(batch, L, ngroups, dstate),
                                   chunk_size, D=D, z=z.reshape(batch, L, nheads, headdim)
                                   if rmsnorm_weight is None else None, initial_states=initial_states,
                                   dt_bias=dt_bias, dt_softplus=True, dt_limit=dt_limit, seq_idx=seq_idx,
                                   return_final_states=return_final_states)
    out, final = out if return_final_states else (out, None)
    out = out.reshape(batch, L, dim)
    if rmsnorm_weight is not None:
        out = reference.gated_rms_norm(out, rmsnorm_weight, None, z=z, eps=rmsnorm_eps,
                                       group_size=dim // ngroups, norm_before_gate=norm_before_gate)
    out = _swiglu_prepend(zx0, out, d_nonssm)
    out = out if outproj_weight is None else cpu_matmul.linear(out, outproj_weight, outproj_bias)
    return (out, final) if return_final_states else out
