"""The Mamba-1 inner path (``mamba_ssm``'s ``mamba_inner_fn``): conv + silu, x_proj, dt_proj,
selective scan with z gating, out_proj.

The fused path is one custom op pair: the forward calls the conv and scan ops' kernels (whatever
backend they pick) and torch matmuls. checkpoint_lvl 1 (default) keeps the scan output and the
scan's chunk-start states (CUDA), as mamba_ssm keeps its scan output and intermediates: the backward
recomputes the conv output, x_proj and dt (no forward scan); level 0 also keeps the conv output;
level >= 2 keeps only the inputs and the backward reruns the forward scan too. The composition of
the public ops remains for the RMS-normed B/C/dt variant and as the reference (:func:`mamba_inner_ref`).

On the devices of ROWS_DEVICES (CUDA) the projections run transposed, as mamba_ssm's do: x_dbl^T
(B, rank + 2N, L) = x_proj_w @ xc and delta = dt_proj_w @ x_dbl^T[:, :rank] per batch, so that u,
delta, z, y and B/C (B, 1, N, L) reach the scan as L-contiguous rows (its rows kernels); out_proj
reads y (B, D, L) transposed in place. Elsewhere (the CPU) the projections stay channels-last."""
from __future__ import annotations

import importlib
from typing import Optional

import torch
from torch import Tensor

from ssm.ops import _checks, _kernels, _library, cpu_matmul
from ssm.ops.conv import dw_causal_conv
from ssm.ops.python import reference
from ssm.ops.selective_scan import selective_scan
from ssm.utils import dispatch

# the scan's implementations, called directly inside the fused op: they keep the layouts their
# inputs come in (channels-last delta gives a channels-last y), which the custom ops would not
_scan_impl = importlib.import_module("ssm.ops.selective_scan")
_conv_impl = importlib.import_module("ssm.ops.conv")

# The devices whose fused path computes the projections transposed (L-contiguous scan rows; session 6,
# H200: mamba-130m prefill 8x2048 24.6 -> 15.0 ms, train step 113.8 -> 95.8 ms). The others (the CPU,
# its kernels and bf16 GEMM workarounds) keep them channels-last; the tests force the rows form there too.
ROWS_DEVICES = ("cuda",)


def _rows(t: Tensor) -> bool:
    return t.device.type in ROWS_DEVICES


def _rms(x: Tensor, weight: Optional[Tensor], eps: float) -> Tensor:
    """RMSNorm without bias over the last dim (float32 compute), or x when weight is None."""
    if weight is None:
        return x
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def _autocast(*weights):
    """Projection weights in the autocast dtype when autocast is on (as mamba_ssm does)."""
    dev = next(w.device.type for w in weights if w is not None)
    if not torch.is_autocast_enabled(dev):
        return weights
    dtype = torch.get_autocast_dtype(dev)
    return tuple(None if w is None else w.to(dtype) for w in weights)


def _split_bc(x_dbl, rank, N, L, B, C, B_proj_bias, C_proj_bias):
    """B and C (B, 1, N, L) from the x_proj output x_dbl (B*L, rank + 2N) unless given."""
    def take(cols, bias):
        t = cols if bias is None else cols + bias.to(cols.dtype)
        # (B*L, N) -> (B, 1, N, L)
        return t.reshape(-1, L, N).transpose(1, 2).unsqueeze(1)
    B = take(x_dbl[:, rank:rank + N], B_proj_bias) if B is None else B
    C = take(x_dbl[:, -N:], C_proj_bias) if C is None else C
    return B, C


def _inner(conv, scan, xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
           out_proj_bias, A, B, C, D, delta_bias, B_proj_bias, C_proj_bias, delta_softplus, rms):
    # xz (B, 2D, L); conv1d_weight (D, 1, W) or (D, W); A (D, N)
    x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias = _autocast(
        x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias)
    batch, _, L = xz.shape
    N, rank = A.shape[-1], delta_proj_weight.shape[1]
    x, z = xz.chunk(2, dim=1)
    w = conv1d_weight.reshape(conv1d_weight.shape[0], conv1d_weight.shape[-1])
    xc = conv(x, w, conv1d_bias, "silu")
    # x_dbl (B*L, rank + 2N)
    # contiguous inputs: a bf16 matmul of a transposed or column-sliced input takes torch's slow CPU path
    x_dbl = cpu_matmul.linear(xc.transpose(1, 2).reshape(batch * L, -1).contiguous(), x_proj_weight)
    dt = cpu_matmul.linear(x_dbl[:, :rank].contiguous(), delta_proj_weight)  # (B*L, D)
    B, C = _split_bc(x_dbl, rank, N, L, B, C, B_proj_bias, C_proj_bias)
    if rms is not None:
        b_w, c_w, dt_w, eps = rms
        B = _rms(B.transpose(-1, -2), b_w, eps).transpose(-1, -2) if b_w is not None else B
        C = _rms(C.transpose(-1, -2), c_w, eps).transpose(-1, -2) if c_w is not None else C
        dt = _rms(dt, dt_w, eps)
    delta = dt.reshape(batch, L, -1).transpose(1, 2)
    y = scan(xc, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return cpu_matmul.linear(y.transpose(1, 2).contiguous(), out_proj_weight, out_proj_bias)


def _check_inner(xz, conv1d_weight, x_proj_weight, delta_proj_weight, out_proj_weight, A, in_proj_weight=None):
    _checks.tensor("xz", xz, ndim=3)
    if in_proj_weight is not None:  # xz is in_proj's input u (B, L, d_model)
        _checks.tensor("in_proj_weight", in_proj_weight, shape=(None, xz.shape[-1]), device=xz.device)
    two_d = xz.shape[1] if in_proj_weight is None else in_proj_weight.shape[0]
    if two_d % 2:
        name = "xz" if in_proj_weight is None else "in_proj_weight"
        raise ValueError(f"{name}: expected an even channel count (x and z halves), got {two_d}")
    dim = two_d // 2
    _checks.tensor("conv1d_weight", conv1d_weight, ndim=(2, 3), device=xz.device)
    if conv1d_weight.shape[0] != dim:
        raise ValueError(f"conv1d_weight: expected {dim} channels, got shape {tuple(conv1d_weight.shape)}")
    _checks.tensor("A", A, shape=(dim, None), device=xz.device)
    _checks.tensor("delta_proj_weight", delta_proj_weight, shape=(dim, None), device=xz.device)
    rank, N = delta_proj_weight.shape[1], A.shape[1]
    _checks.tensor("x_proj_weight", x_proj_weight, shape=(None, dim), device=xz.device)
    if x_proj_weight.shape[0] < rank + 2 * N:
        raise ValueError(f"x_proj_weight: expected at least {rank + 2 * N} rows (dt_rank + 2 d_state), "
                         f"got shape {tuple(x_proj_weight.shape)}")
    _checks.tensor("out_proj_weight", out_proj_weight, shape=(None, dim), device=xz.device)


# ---- fused path: one custom op pair; the backward recomputes conv, x_proj, dt and the scan ------

def _conv_silu(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    # x (B, D, L) view of xz; w (D, W) float32 -> silu(conv(x)) (B, D, L)
    # (the public op without autograd: its planned call, no registered op's dispatcher layers, whose host
    # time each of the forward's and backward's calls paid)
    return dw_causal_conv(x, w, b, "silu")


def _project(xc, x_proj_w, dt_proj_w, A, B, C, B_proj_bias, C_proj_bias):
    """x_dbl (B*L, rank + 2N) = x_proj(xc^T); delta (B, D, L) = dt_proj(x_dbl[:, :rank])^T (a view of
    (B*L, D)); B, C (B, 1, N, L) views of x_dbl's columns (+ bias) unless given."""
    batch, dim, L = xc.shape
    rank, N = dt_proj_w.shape[1], A.shape[1]
    # CPU: x_dbl^T (B, rank + 2N, L) = W xc per batch reads the conv output in place (copying it
    # transposed for x_dbl = xc^T W^T cost as much as the product); x_dbl, its transpose, is narrow
    x_dbl = cpu_matmul.matmul(x_proj_w, xc).transpose(1, 2).reshape(batch * L, -1)
    delta = cpu_matmul.linear(x_dbl[:, :rank].contiguous(), dt_proj_w).view(batch, L, dim).transpose(1, 2)

    def cols(c0, bias):
        t = x_dbl[:, c0:c0 + N] if bias is None else x_dbl[:, c0:c0 + N] + bias.to(x_dbl.dtype)
        # (B*L, N) -> (B, 1, N, L)
        return t.view(batch, L, N).transpose(1, 2).unsqueeze(1)
    B = cols(rank, B_proj_bias) if B is None else B
    C = cols(x_dbl.shape[1] - N, C_proj_bias) if C is None else C
    return x_dbl, delta, B, C


def _project_rows(xc, x_proj_w, dt_proj_w, A, B, C, B_proj_bias, C_proj_bias):
    """The transposed projections: x_dbl^T (B, rank + 2N, L) = x_proj_w @ xc and delta (B, D, L) =
    dt_proj_w @ x_dbl^T[:, :rank] per batch (L-contiguous); B, C (B, 1, N, L) row views of x_dbl^T
    (+ bias) unless given."""
    batch = xc.shape[0]
    rank, N = dt_proj_w.shape[1], A.shape[1]
    x_dbl = torch.bmm(x_proj_w.expand(batch, -1, -1), xc)
    delta = torch.bmm(dt_proj_w.expand(batch, -1, -1), x_dbl[:, :rank])

    def rows(r0, bias):
        # (B, N, L) -> (B, 1, N, L)
        t = x_dbl[:, r0:r0 + N]
        return (t if bias is None else t + bias.to(t.dtype)[:, None]).unsqueeze(1)
    B = rows(rank, B_proj_bias) if B is None else B
    C = rows(x_dbl.shape[1] - N, C_proj_bias) if C is None else C
    return x_dbl, delta, B, C


def _out_proj(y: Tensor, out_proj_w: Tensor, out_proj_b: Optional[Tensor]) -> Tensor:
    """out (B, L, O) from the scan output y (B, D, L): channels-last y (the CPU path) as y^T rows,
    L-contiguous y read transposed in place by one batched GEMM."""
    if not _rows(y):
        return cpu_matmul.linear(y.transpose(1, 2).contiguous(), out_proj_w, out_proj_b)
    out = torch.bmm(y.transpose(1, 2), out_proj_w.t().expand(y.shape[0], -1, -1))
    return out if out_proj_b is None else out.add_(out_proj_b.to(out.dtype))


# The fused path's scan calls on CUDA are planned (found by their metadata in _scan_plans): a layer's call
# skips the backend lookups, layout checks and view tuples of _fwd_run / _bwd_impl (host time on every layer).
_scan_plans = _kernels.PlanCache()


def _scan(xc, delta, A, B, C, D, z, delta_bias, softplus, checkpoints=False):
    # -> y (B, D, L) gated by silu(z), in delta's layout; the backward's checkpoints or None
    tensors = (xc, delta, A, B, C, D, z, delta_bias)
    sig, plan = _scan_plans.find((softplus, checkpoints), tensors)
    if plan:
        return _run_scan_plan(plan, tensors, softplus)
    if plan is None and sig is not None:  # (False: a kept "no plan" for this metadata)
        _scan_plans[sig] = _make_scan_plan(tensors, checkpoints)
    y, _, chunk_states = _scan_impl._fwd_run(xc, delta, A, B, C, D, z, delta_bias, None, None, None, softplus,
                                             False, checkpoints)
    return y, chunk_states


def _make_scan_plan(tensors, checkpoints):
    """What a CUDA scan call of these tensors' metadata needs besides their data pointers, or False (other
    backends: the CPU kernel's task split follows the thread count of each call)."""
    u, delta, A, B, C, D, z, dt_bias = tensors
    if u.device.type != "cuda" or u.numel() == 0 or "cuda" != dispatch.select_backend(
            "selective_scan", u.device, lambda b: _scan_impl._reason(b, "selective_scan_fwd", u, delta, B, C, z,
                                                                     A.shape[1])):
        return False
    batch, dim, L = u.shape
    N = A.shape[1]
    groups, slices = _scan_impl._layout(u, B, C, 1)
    head = (_kernels.dtype_code(u), batch, dim, L, N, groups, slices)
    tails = _kernels.ref_tails((_kernels.AS_IS,) * len(tensors), tensors)
    # y in delta's layout (_rows_like); the backward's chunk states where the thread kernel writes them
    checkpoint = checkpoints and _scan_impl._thread_bwd(u, N, B, C, None, None, None)
    return _kernels.module("cuda").selective_scan_fwd, head, tails, _scan_impl._channels_last(delta), checkpoint


def _run_scan_plan(plan, tensors, softplus):
    kernel, head, tails, rows_cl, checkpoint = plan
    u, N = tensors[0], head[4]
    batch, dim, L = u.shape
    y = _kernels.empty((batch, L, dim), u).transpose(1, 2) if rows_cl else _kernels.empty((batch, dim, L), u)
    states = _scan_impl._chunk_states("cuda", u, N, True) if checkpoint else None
    r = _kernels.ref
    kernel(*head, *_kernels.planned_refs(tails, tensors), None, None, None, batch, r(y), None, r(states), softplus,
           _kernels.exec_arg("cuda", u))
    return y, states


def _scan_bwd(u, delta, A, B, C, D, z, delta_bias, dy, softplus, chunk_states, dz_out):
    """(du, ddelta, dA, dB, dC, dD, dz, d delta_bias) of the fused path's scan, given the forward's chunk states
    (or None); planned on CUDA as the forward's call."""
    tensors = (u, delta, A, B, C, D, z, delta_bias, dy, chunk_states, dz_out)
    sig, plan = _scan_plans.find((softplus, "bwd"), tensors)
    if plan:
        return _run_scan_bwd_plan(plan, tensors, softplus)
    if plan is None and sig is not None:
        _scan_plans[sig] = _make_scan_bwd_plan(tensors)
    return _scan_impl._bwd_impl(u, delta, A, B, C, D, z, delta_bias, None, None, None, dy, u.new_empty(0), softplus,
                                False, chunk_states, dz_out)[:8]


def _make_scan_bwd_plan(tensors):
    """A CUDA backward's plan (as _make_scan_plan's) where the forward's chunk states are given, else False."""
    u, delta, A, B, C, D, z, dt_bias, dy, states, dz_out = tensors
    fwd = False if states is None else _make_scan_plan(tensors[:8], False)
    if fwd is False or "cuda" != dispatch.select_backend(
            "selective_scan_bwd", u.device, lambda b: _scan_impl._reason(b, "selective_scan_bwd", u, delta, B, C, z,
                                                                         A.shape[1])):
        return False
    tails = _kernels.ref_tails((_kernels.AS_IS,) * len(tensors), tensors)
    return _kernels.module("cuda").selective_scan_bwd, fwd[1], tails  # the forward's head: the same sizes


def _run_scan_bwd_plan(plan, tensors, softplus):
    kernel, head, tails = plan
    u, delta, A, B, C, D, z, dt_bias, dy, states, dz_out = tensors
    batch, dim, L = u.shape
    slices, f32, e = head[6], torch.float32, _kernels.empty
    du, ddelta = _scan_impl._rows_like(u, u), _scan_impl._rows_like(delta, u)
    dz = None if z is None else _scan_impl._rows_like(z, u) if dz_out is None else dz_out
    dA = e((batch, dim, A.shape[1]), u, f32)
    dD, ddt_bias = (None if t is None else e((batch, dim), u, f32) for t in (D, dt_bias))
    dB, dC = (e((slices, *t.shape) if t.dim() == 4 else (batch, dim, A.shape[1]), u, f32) for t in (B, C))
    r, refs = _kernels.ref, _kernels.planned_refs(tails, tensors)
    kernel(*head, *refs[:8], None, None, None, batch, refs[8], None, r(du), r(ddelta), r(dA),
           r(_scan_impl._slices_as_rows(dB)), r(_scan_impl._slices_as_rows(dC)), r(dD), r(dz), r(ddt_bias), None,
           refs[9], True, softplus, _kernels.exec_arg("cuda", u))
    s0 = _scan_impl._sum0
    return du, ddelta, s0(dA), s0(dB).to(B.dtype), s0(dC).to(C.dtype), s0(dD), dz, s0(ddt_bias)


def _small_params(xz, conv_w, conv_b, A, B, C, D, delta_bias, B_proj_bias, C_proj_bias, a_log):
    """The small parameters, which the fused op takes in their own dtypes (no cast nodes under autograd), as the
    kernels take them: float32 (float64 for float64 xz) contiguous, kept copies (_kernels.small_param); conv_w
    as (D, W); A = -exp(A) when a_log (A is A_log); constant B / C (D, N) likewise, variable ones as given."""
    par = torch.float64 if xz.dtype == torch.float64 else torch.float32

    def p(t):
        return _kernels.small_param(t, par)
    w = p(conv_w)
    w = w.view(w.shape[0], w.shape[-1])
    A = _kernels.derived_param(A, ("neg_exp", par), lambda t: -torch.exp(t.to(par))) if a_log else p(A)
    B, C = (t if t is None or t.dim() == 4 else p(t) for t in (B, C))
    return w, p(conv_b), A, B, C, p(D), p(delta_bias), p(B_proj_bias), p(C_proj_bias)


def _param_grads(params, grads, A_f, a_log):
    """The small parameters' gradients (float32, the kernels' shapes) in each parameter's shape and dtype; A's
    to A_log (d A_log = dA * A) when a_log. params / grads: conv_w, conv_b, A, B, C, D, delta_bias,
    B_proj_bias, C_proj_bias."""
    out = []
    for i, (t, g) in enumerate(zip(params, grads)):
        if t is None or g is None:
            out.append(None)
            continue
        if i == 2 and a_log:
            g = g * A_f
        out.append(g.reshape(t.shape).to(t.dtype))
    return out


def _in_proj(u: Tensor, in_w: Tensor) -> Tensor:
    """xz (B, 2D, L) = in_w @ u^T per batch, as the Mamba1 module computes it: a (B, 2D, L) view of the
    (2D, B*L) product (L contiguous)."""
    batch, L, _ = u.shape
    return cpu_matmul.matmul(in_w, u.reshape(batch * L, -1).t()).view(-1, batch, L).permute(1, 0, 2)


def _fused_fwd(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, B, C, D, delta_bias,
               B_proj_bias, C_proj_bias, in_w=None, softplus=True, a_log=False, keep_xc=False, keep_y=False,
               checkpoints=False):
    """xz (B, 2D, L) -> out (B, L, out_dim); with keep_xc also the conv output (B, D, L), with keep_y
    the scan output as y^T (B, L, D) (else empty); with keep_y and checkpoints also the scan's
    chunk-start states, where the CUDA kernel writes them (else empty), as (B, nchunks, N, D) (the
    backward's permuted view); last xz itself when in_w is given (then the first argument is in_proj's
    input u (B, L, d_model) and xz = _in_proj(u, in_w)), else empty. Small parameters in any dtype
    (see _small_params)."""
    xz_out = xz = _in_proj(xz, in_w) if in_w is not None else xz
    conv_w, conv_b, A, B, C, D, delta_bias, B_proj_bias, C_proj_bias = _small_params(
        xz, conv_w, conv_b, A, B, C, D, delta_bias, B_proj_bias, C_proj_bias, a_log)
    dim = xz.shape[1] // 2
    x, z = xz[:, :dim], xz[:, dim:]
    xc = _conv_silu(x, conv_w, conv_b)
    project = _project_rows if _rows(xz) else _project
    _, delta, B, C = project(xc, x_proj_w, dt_proj_w, A, B, C, B_proj_bias, C_proj_bias)
    y, states = _scan(xc, delta, A, B, C, D, z, delta_bias, softplus, keep_y and checkpoints)
    out = _out_proj(y, out_proj_w, out_proj_b)
    # (absent outputs: distinct empty tensors, a custom op's outputs may not alias)
    states = xz.new_empty(0) if states is None else states.permute(0, 2, 3, 1)
    return (out, xc.contiguous() if keep_xc else xz.new_empty(0), _kept_y(y, _rows(xz)) if keep_y else xz.new_empty(0),
            states, xz_out if in_w is not None else xz.new_empty(0))


def _kept_y(y: Tensor, rows: bool) -> Tensor:
    """y (B, D, L) kept as y^T (B, L, D) in the layout the fake gives: a transposed L-contiguous y
    (rows layout) or contiguous (channels-last y, no copy)."""
    return y.contiguous().transpose(1, 2) if rows else y.transpose(1, 2).contiguous()


# exact_layout: the kept y^T is a transposed view in the rows layout (the fake gives the same)
@_library.custom_op("ssm::mamba_inner_fwd", mutates_args=(), exact_layout=True)
def _fwd_op(xz: Tensor, conv_w: Tensor, conv_b: Optional[Tensor], x_proj_w: Tensor, dt_proj_w: Tensor,
            out_proj_w: Tensor, out_proj_b: Optional[Tensor], A: Tensor, B: Optional[Tensor], C: Optional[Tensor],
            D: Optional[Tensor], delta_bias: Optional[Tensor], B_proj_bias: Optional[Tensor],
            C_proj_bias: Optional[Tensor], in_w: Optional[Tensor], softplus: bool, a_log: bool, keep_xc: bool,
            keep_y: bool, checkpoints: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _fused_fwd(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, B, C, D, delta_bias,
                      B_proj_bias, C_proj_bias, in_w, softplus, a_log, keep_xc, keep_y, checkpoints)


@_fwd_op.register_fake
def _(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, B, C, D, delta_bias, B_proj_bias,
      C_proj_bias, in_w, softplus, a_log, keep_xc, keep_y, checkpoints):
    # (checkpoints is False when compiling: their shape depends on the backend)
    xz_out = xz.new_empty(0)
    if in_w is not None:  # xz (the op's output) as _in_proj's view of (2D, B*L)
        xz = xz_out = xz.new_empty((in_w.shape[0], xz.shape[0], xz.shape[1])).permute(1, 0, 2)
    batch, two_d, L = xz.shape
    xc = xz.new_empty((batch, two_d // 2, L)) if keep_xc else xz.new_empty(0)
    y = xz.new_empty((batch, two_d // 2, L)) if keep_y else xz.new_empty(0)
    y_t = (y.transpose(1, 2) if _rows(xz) else y.transpose(1, 2).contiguous()) if keep_y else y
    return xz.new_empty((batch, L, out_proj_w.shape[0])), xc, y_t, xz.new_empty(0), xz_out


def _out_proj_grads(dout, y, out_proj_w, has_bias):
    # dout (B, L, O); y (B, D, L) -> dy (B, D, L) view, dW (O, D), db (O,)
    batch, L, O = dout.shape
    d2 = dout.reshape(batch * L, O)
    dy = cpu_matmul.matmul(d2, out_proj_w).view(batch, L, -1).transpose(1, 2)
    dw = torch.einsum("blo,bdl->od", dout, y)
    return dy, dw, d2.sum(0) if has_bias else None


def _out_proj_grads_rows(dout, y, out_proj_w, has_bias):
    # dout (B, L, O); y (B, D, L) L-contiguous -> dy (B, D, L) L-contiguous, dW (O, D), db (O,)
    batch = dout.shape[0]
    dout_t = dout.transpose(1, 2)
    dy = torch.bmm(out_proj_w.t().expand(batch, -1, -1), dout_t)
    return dy, _product_sum(dout_t, y.transpose(1, 2)), dout.sum((0, 1)) if has_bias else None


# torch.bmm(..., out_dtype=torch.float32): half inputs, float32 products (CUDA; torch >= 2.8)
_BMM_OUT_DTYPE = hasattr(torch.ops.aten.bmm, "dtype")


def _product_sum(a: Tensor, b: Tensor) -> Tensor:
    """sum over the batch of a_i @ b_i, (B, M, K) x (B, K, N) -> (M, N) in a's dtype: the per-batch
    products in float32 (float64 for float64), so that the result is rounded once. Half inputs: float32
    products from cuBLAS (H200, 130m out_proj: 120 us against 242 for copying y^T and one GEMM), or
    widened operands elsewhere."""
    if a.dtype in (torch.float16, torch.bfloat16):
        prods = (torch.bmm(a, b, out_dtype=torch.float32) if a.is_cuda and _BMM_OUT_DTYPE
                 else torch.bmm(a.float(), b.float()))
    else:
        prods = torch.bmm(a, b)
    return prods.sum(0).to(a.dtype)


def _proj_grads_rows(ddelta, dB, dC, xc, du, x_dbl, x_proj_w, dt_proj_w, N, B_given, C_given):
    """_proj_grads of the transposed projections: x_dbl^T (B, rank + 2N, L); du, the result dxc and
    the B / C row gradients (B, N, L) L-contiguous (dxc is du, updated in place)."""
    batch, _, L = ddelta.shape
    rank = dt_proj_w.shape[1]
    d_dt_w = _product_sum(ddelta, x_dbl[:, :rank].transpose(1, 2))
    # dx_dbl^T (B, rank + 2N, L): dt rows through dt_proj, B / C rows from the scan, zeros elsewhere
    dBc = None if B_given else dB[:, 0]
    dCc = None if C_given else dC[:, 0]
    mid = x_dbl.shape[1] - rank - 2 * N
    # zero rows only for x_proj's unused outputs (none in Mamba1) and a B / C given explicitly: a launch each
    mid_zeros = x_dbl.new_zeros(batch, mid, L) if mid else None
    parts = [torch.bmm(dt_proj_w.t().expand(batch, -1, -1), ddelta), dBc, mid_zeros, dCc]
    parts = [x_dbl.new_zeros(batch, N, L) if p is None else p for i, p in enumerate(parts) if p is not None or i != 2]
    dx_dbl = torch.cat(parts, dim=1)
    d_x_w = _product_sum(dx_dbl, xc.transpose(1, 2))
    dxc = du.baddbmm_(x_proj_w.t().expand(batch, -1, -1), dx_dbl)
    return d_dt_w, d_x_w, dxc, dBc, dCc


def _proj_bias_grad(g: Optional[Tensor]) -> Optional[Tensor]:
    """d B/C_proj_bias (N,) from the column (B*L, N) or row (B, N, L) gradients of x_dbl."""
    return None if g is None else g.sum(0) if g.dim() == 2 else g.sum((0, 2))


def _proj_grads(ddelta, dB, dC, xc, du, x_dbl, x_proj_w, dt_proj_w, N, B_given, C_given):
    """Gradients through dt_proj and x_proj: d dt_proj_w, d x_proj_w, dxc = du + the x_proj path
    (B, D, L), and the B / C column gradients (B*L, N) (None for a B / C given explicitly)."""
    batch, dim, L = ddelta.shape
    rank = dt_proj_w.shape[1]
    # ddt (B*L, D)
    ddt = ddelta.transpose(1, 2).reshape(batch * L, dim)
    d_dt_w = cpu_matmul.matmul(ddt.t(), x_dbl[:, :rank])
    dx_dbl = torch.zeros_like(x_dbl)
    dx_dbl[:, :rank] = cpu_matmul.matmul(ddt, dt_proj_w)
    dBc = None if B_given else dB[:, 0].transpose(1, 2).reshape(batch * L, N)
    dCc = None if C_given else dC[:, 0].transpose(1, 2).reshape(batch * L, N)
    if dBc is not None:
        dx_dbl[:, rank:rank + N] = dBc
    if dCc is not None:
        dx_dbl[:, x_dbl.shape[1] - N:] += dCc
    # per batch: d x_proj_w^T = xc dx_dbl (B, D, rank + 2N) summed; dxc = du + x_proj_w^T dx_dbl^T
    dx_dbl = dx_dbl.view(batch, L, -1)
    acc = torch.float64 if xc.dtype == torch.float64 else torch.float32
    d_x_w = torch.bmm(xc, dx_dbl).sum(0, dtype=acc).t().to(xc.dtype)
    # (torch's CPU bf16 baddbmm of transposed operands loses precision; a plain matmul does not)
    dxc = du + cpu_matmul.matmul(dx_dbl.view(batch * L, -1), x_proj_w).view(batch, L, dim).transpose(1, 2)
    return d_dt_w, d_x_w, dxc, dBc, dCc


def _fused_bwd(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, B, C, D, delta_bias,
               B_proj_bias, C_proj_bias, in_w, xc, y_t, states, xz_kept, dout, softplus, a_log):
    """Gradients of every input (the small parameters' in their own shapes and dtypes; with in_w, d u and
    d in_w last, xz_kept being xz); xc, y_t, states: what the forward kept (empty: recomputed here)."""
    if in_w is not None:
        u, xz = xz, xz_kept
    params = (conv_w, conv_b, A, B, C, D, delta_bias, B_proj_bias, C_proj_bias)
    conv_w, conv_b, A, B, C, D, delta_bias, B_proj_bias, C_proj_bias = _small_params(xz, *params, a_log)
    batch, two_d, L = xz.shape
    dim = two_d // 2
    x, z = xz[:, :dim], xz[:, dim:]
    rows = _rows(xz)
    xc = xc if xc.numel() else _conv_silu(x, conv_w, conv_b)
    x_dbl, delta, Bs, Cs = (_project_rows if rows else _project)(xc, x_proj_w, dt_proj_w, A, B, C, B_proj_bias,
                                                                 C_proj_bias)
    if y_t.numel():  # y (B, D, L) and the chunk-start states (B, D, nchunks, N) as the scan gave them
        y, chunk_states = y_t.transpose(1, 2), (states.permute(0, 3, 1, 2) if states.numel() else None)
    else:
        y, chunk_states = _scan(xc, delta, A, Bs, Cs, D, z, delta_bias, softplus, True)
    dy, d_out_w, d_out_b = (_out_proj_grads_rows if rows else _out_proj_grads)(dout, y, out_proj_w,
                                                                               out_proj_b is not None)
    dxz = _grad_like(xz)
    # rows devices: the scan and conv kernels write dz and dx straight into d xz's halves
    dx_buf, dz_buf = (dxz[:, :dim], dxz[:, dim:]) if rows else (None, None)
    du, ddelta, dA, dB, dC, dD, dz, d_delta_bias = _scan_bwd(xc, delta, A, Bs, Cs, D, z, delta_bias, dy, softplus,
                                                             chunk_states, dz_buf)
    d_dt_w, d_x_proj_w, dxc, dBc, dCc = (_proj_grads_rows if rows else _proj_grads)(
        ddelta, dB, dC, xc, du, x_dbl, x_proj_w, dt_proj_w, A.shape[1], B is not None, C is not None)
    dx, d_conv_w, d_conv_b, _ = _conv_impl._bwd_impl(x, conv_w, conv_b, None, None, dxc, xz.new_empty(0), True,
                                                     False, dx_buf)
    d_conv_w, d_conv_b, dA, dB, dC, dD, d_delta_bias, d_B_proj_bias, d_C_proj_bias = _param_grads(params, (
        d_conv_w, d_conv_b, dA, dB if B is not None else None, dC if C is not None else None, dD, d_delta_bias,
        None if B_proj_bias is None else _proj_bias_grad(dBc), None if C_proj_bias is None else _proj_bias_grad(dCc)),
        A, a_log)
    grads = (d_conv_w, d_conv_b, d_x_proj_w, d_dt_w, d_out_w, d_out_b, dA, dB, dC, dD, d_delta_bias, d_B_proj_bias,
             d_C_proj_bias)
    dxz = _into_halves(dxz, dx, dz)
    if in_w is None:
        return (dxz, *(_library.empty_if_none(g, xz).contiguous() for g in grads), xz.new_empty(0))
    # in_proj: dxz (2D, B*L) as laid out; d u (B, L, d_model) = dxz^T in_w, d in_w = dxz u
    dxz2 = dxz.permute(1, 0, 2).reshape(in_w.shape[0], -1)
    du = cpu_matmul.matmul(dxz2.t(), in_w).view(u.shape)
    d_in_w = cpu_matmul.matmul(dxz2, u.reshape(dxz2.shape[1], -1))
    return (du, *(_library.empty_if_none(g, xz).contiguous() for g in grads), d_in_w)


def _grad_like(xz: Tensor) -> Tensor:
    """A d xz buffer in xz's own strides (empty_like keeps a dense layout; NaN-poisoned in tests): the
    model's xz is a view of in_proj's (2D, B*L) output, whose backward then reads it without a copy."""
    dxz = torch.empty_like(xz)
    return dxz.fill_(float("nan")) if _kernels.POISON_OUTPUTS else dxz


def _into_halves(dxz: Tensor, dx: Tensor, dz: Tensor) -> Tensor:
    """d xz = [dx, dz]: halves the kernels did not write in place are copied in."""
    dim = dx.shape[1]
    for half, g in ((dxz[:, :dim], dx), (dxz[:, dim:], dz)):
        if g.data_ptr() != half.data_ptr() or g.stride() != half.stride():
            half.copy_(g)
    return dxz


# exact_layout: d xz comes in xz's strides (see _grad_like; the fake gives the same), the rest contiguous
@_library.custom_op("ssm::mamba_inner_bwd", mutates_args=(), exact_layout=True)
def _bwd_op(xz: Tensor, conv_w: Tensor, conv_b: Optional[Tensor], x_proj_w: Tensor, dt_proj_w: Tensor,
            out_proj_w: Tensor, out_proj_b: Optional[Tensor], A: Tensor, B: Optional[Tensor], C: Optional[Tensor],
            D: Optional[Tensor], delta_bias: Optional[Tensor], B_proj_bias: Optional[Tensor],
            C_proj_bias: Optional[Tensor], in_w: Optional[Tensor], xc: Tensor, y_t: Tensor, states: Tensor,
            xz_kept: Tensor, dout: Tensor, softplus: bool, a_log: bool) -> list[Tensor]:
    return list(_library._unalias(list(_fused_bwd(
        xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, B, C, D, delta_bias, B_proj_bias,
        C_proj_bias, in_w, xc, y_t, states, xz_kept, dout, softplus, a_log)), (xz, xz_kept, dout)))


@_bwd_op.register_fake
def _(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, B, C, D, delta_bias, B_proj_bias,
      C_proj_bias, in_w, xc, y_t, states, xz_kept, dout, softplus, a_log):
    def like(t):
        return xz.new_empty(0) if t is None else _library.empty_like(t)
    first = torch.empty_like(xz) if in_w is None else _library.empty_like(xz)  # (d xz in xz's strides; d u)
    return [first] + [like(t) for t in (conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, B, C, D,
                                        delta_bias, B_proj_bias, C_proj_bias, in_w)]


def _setup_context(ctx, inputs, output):
    *tensors, softplus, a_log, keep_xc, keep_y, checkpoints = inputs
    _, xc, y_t, states, xz = output
    ctx.save_for_backward(*tensors, xc, y_t, states, xz)
    ctx.mark_non_differentiable(xc, y_t, states, xz)
    # the kept outputs get no gradient: no zero tensors of their size materialized for them
    ctx.set_materialize_grads(False)
    ctx.softplus, ctx.a_log = softplus, a_log


def _backward(ctx, dout, _dxc, _dy, _dstates, _dxz):
    saved = ctx.saved_tensors
    if dout is None:  # out unused: (B, L, out_dim) zeros
        xz, out_w = saved[0] if saved[14] is None else saved[-1], saved[5]
        dout = xz.new_zeros(xz.shape[0], xz.shape[2], out_w.shape[0])
    grads = _bwd_op(*saved, dout.contiguous(), ctx.softplus, ctx.a_log)
    return (*(None if t is None else g for t, g in zip(saved[:15], grads)), None, None, None, None, None)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ---- public ----------------------------------------------------------------------------------

def _prepare(xz, x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias, B, C, in_proj_weight):
    """xz (or u) and the projection weights (x, dt, out, out bias, in) in the autocast dtype when autocast is on
    (as mamba_ssm does); variable B/C as (B, G, N, L) in xz's dtype. (The small parameters go to the fused op
    as they are.)"""
    weights = _autocast(x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias, in_proj_weight)
    if torch.is_autocast_enabled(xz.device.type):
        xz = xz.to(weights[0].dtype)

    def bc(t):
        if t is None or t.dim() == 2:
            return t
        return (t.unsqueeze(1) if t.dim() == 3 else t).to(xz.dtype)
    return xz, weights, bc(B), bc(C)


# The metadata of calls whose arguments passed _check_inner (which reads nothing else): a repeated call (every
# layer) skips the checks.
_checked = _kernels.PlanCache()


def _checked_inner(*tensors):
    """_check_inner, once per call metadata."""
    sig, seen = (None, None) if torch.compiler.is_compiling() else _checked.find((), tensors)
    if seen:
        return
    _check_inner(*tensors)
    if sig is not None:
        _checked[sig] = True


def mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                   out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None,
                   delta_softplus=True, checkpoint_lvl=1, b_rms_weight=None, c_rms_weight=None,
                   dt_rms_weight=None, b_c_dt_rms_eps=1e-6, *, A_is_log=False, in_proj_weight=None):
    """Mamba-1 mixer body: xz (B, 2D, L) -> out_proj output (B, L, out_dim).

    x, z = halves of xz; x = silu(conv(x)); x_dbl = x_proj(x); delta = delta_proj(x_dbl[:, :rank]);
    B, C from x_dbl unless given (+ B/C_proj_bias), optional RMSNorm of B, C, delta; selective scan
    with z, D, delta_bias, softplus; out_proj. ``checkpoint_lvl`` 1 (default) keeps the scan output
    (and the CUDA scan's chunk-start states) for the backward, which recomputes the conv and dt; 0
    keeps the conv output too; >= 2 keeps only the inputs (the backward reruns the scan). With any of the
    RMS weights the path is the composition of the public ops (each with its own autograd).
    ``A_is_log``: A holds A_log (a Mamba-1 module's parameter): A = -exp(A_log) is computed inside the fused
    op (once per parameter update) and its gradient goes to A_log, without autograd nodes of their own.
    ``in_proj_weight`` (2D, d_model): xz is in_proj's input u (B, L, d_model) instead, and xz = in_proj_weight @ u^T
    (per batch) is computed inside the fused op (a Mamba-1 module's layer body as one autograd node)."""
    _checked_inner(xz, conv1d_weight, x_proj_weight, delta_proj_weight, out_proj_weight, A, in_proj_weight)
    if in_proj_weight is not None and (b_rms_weight is not None or c_rms_weight is not None
                                       or dt_rms_weight is not None):
        xz, in_proj_weight = _in_proj(xz, in_proj_weight), None
    if b_rms_weight is not None or c_rms_weight is not None or dt_rms_weight is not None:
        rms = (b_rms_weight, c_rms_weight, dt_rms_weight, b_c_dt_rms_eps)
        return _inner(dw_causal_conv, selective_scan, xz, conv1d_weight, conv1d_bias, x_proj_weight,
                      delta_proj_weight, out_proj_weight, out_proj_bias, -torch.exp(A.float()) if A_is_log else A,
                      B, C, D, delta_bias, B_proj_bias, C_proj_bias, delta_softplus, rms)
    xz, weights, B, C = _prepare(xz, x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias, B, C,
                                 in_proj_weight)
    args = (xz, conv1d_weight, conv1d_bias, *weights[:4], A, B, C, D, delta_bias, B_proj_bias, C_proj_bias, weights[4])
    with _library.autocast_off(xz.device.type):
        if _library.use_custom_op(*args):
            keep_y = checkpoint_lvl < 2  # level 2: session 6's level 1
            return _fwd_op(*args, bool(delta_softplus), bool(A_is_log), checkpoint_lvl < 1, keep_y,
                           keep_y and not torch.compiler.is_compiling())[0]
        return _fused_fwd(*args, bool(delta_softplus), bool(A_is_log))[0]


def mamba_inner_ref(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                    out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None,
                    delta_softplus=True):
    """The unfused pure PyTorch composition of :func:`mamba_inner_fn` (reference ops)."""
    _check_inner(xz, conv1d_weight, x_proj_weight, delta_proj_weight, out_proj_weight, A)
    return _inner(reference.dw_causal_conv, reference.selective_scan, xz, conv1d_weight, conv1d_bias,
                  x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias, A, B, C, D, delta_bias,
                  B_proj_bias, C_proj_bias, delta_softplus, None)
