"""Reference ops: the readable, executable specification of every op, in plain PyTorch.

Every fast kernel (C++ CPU, CUDA) is tested against these functions run in float64, and the
library falls back to them when a fast kernel cannot run. So they are complete (every
argument of the op contract), differentiable (plain torch autograd goes through every
function, with respect to every floating-point tensor argument) and meant to be read top
to bottom.

Conventions
-----------
Shape letters: B batch, L length, D channels, N state size, H heads, P head dim,
G groups, W conv width, S stored conv-state length, c chunk index, T chunk size.
The shape of the result of a tensor expression is given in a comment above it.

Precision: inputs are upcast to float32 (float64 when any input is float64, so that the
tests can run the oracle in float64) and all arithmetic happens there. Outputs are cast
back to the dtype of the main input (``x``, ``u`` or ``X``). Scan states that are returned
(final / last / per-sequence states) stay in the compute dtype: float32, or float64 for
float64 inputs. States that are updated in place keep the dtype of the cache tensor.

Arguments are not validated at length here; the op layer above does that.

Decisions taken where the contract is silent
--------------------------------------------
* ``seq_idx`` in the scans is read as "a new segment starts at every token whose
  ``seq_idx`` differs from the previous token's": the state is reset there. ``seq_idx`` in
  the conv is read literally, like ``causal_conv1d``: input ``j`` reaches output ``t`` only
  when ``seq_idx[j] == seq_idx[t]``. Both agree for the usual nondecreasing ``seq_idx``.
* The state before token 0 (``initial_state(s)``) belongs to the segment of token 0.
* ``cu_seqlens`` (B == 1) gives each packed sequence its own initial state
  (``(nseq, ...)``) and its own final state; an empty sequence's final state is its initial
  state (or zeros). With ``cu_seqlens`` a ``seq_idx`` argument is ignored (it is derived).
* ``ssd_chunk_scan`` with ``cu_seqlens`` lays the sequences out so that each starts on a chunk
  boundary (zero-padding each to a multiple of ``chunk_size``); the state-passing loop then
  starts every sequence from its own initial state, and each sequence's final state is the
  state leaving its last chunk. Costs at most ``chunk_size - 1`` padding tokens per sequence.
  Without ``cu_seqlens``, sequences marked by ``seq_idx`` share chunks and are kept apart by
  masks inside the chunks.
* ``fused_layer_norm(residual_in_fp32=True)`` stores the residual in float32, or in float64
  for float64 inputs (the compute dtype).
* ``dw_causal_conv_update`` computes outputs from the new inputs at full precision; only the
  copy written into ``conv_state`` is rounded to the cache dtype.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "dw_causal_conv",
    "dw_causal_conv_update",
    "selective_scan",
    "selective_state_step",
    "ssd_chunk_scan",
    "ssd_scan_sequential",
    "fused_layer_norm",
    "gated_rms_norm",
]


# =============================================================================================
# Small helpers shared by the ops
# =============================================================================================

def _compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """float64 when any floating input is float64, else float32 (fp16/bf16 are upcast)."""
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            return torch.float64
    return torch.float32


def _up(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


def _uses_silu(activation) -> bool:
    """activation: None/False (identity) or "silu"/"swish"/True."""
    if activation in (None, False):
        return False
    assert activation in ("silu", "swish", True), f"activation must be None, 'silu' or 'swish', got {activation!r}"
    return True


def _softplus(dt: Tensor) -> Tensor:
    """log1p(exp(dt)) where dt <= 20, dt itself above (the threshold of the reference kernels)."""
    return F.softplus(dt, beta=1.0, threshold=20.0)


def _transform_dt(dt: Tensor, dt_bias: Optional[Tensor], softplus: bool) -> Tensor:
    """dt + dt_bias (dt_bias broadcasts against dt's trailing dims), then softplus if asked."""
    if dt_bias is not None:
        dt = dt + dt_bias
    if softplus:
        dt = _softplus(dt)
    return dt


def _gate(y: Tensor, z: Optional[Tensor]) -> Tensor:
    """y * silu(z), or y when there is no gate."""
    return y if z is None else y * F.silu(z)


def _sequence_of_token(cu_seqlens: Tensor, L: int) -> Tensor:
    """For sequences packed along L by cu_seqlens (nseq+1,): the sequence index of each token (L,).

    Empty sequences own no token, so indices may jump (e.g. cu_seqlens [0, 3, 3, 5] gives
    [0, 0, 0, 2, 2])."""
    bounds = cu_seqlens.to(torch.int64)
    positions = torch.arange(L, device=cu_seqlens.device)
    return torch.searchsorted(bounds[1:], positions, right=True)


def _sequence_bounds(cu_seqlens: Tensor) -> list[tuple[int, int]]:
    """[(start, end), ...] per packed sequence, as Python ints."""
    b = [int(v) for v in cu_seqlens.tolist()]
    return list(zip(b[:-1], b[1:]))


def _resolve_seq_meta(seq_meta: Optional[dict], seq_idx: Optional[Tensor], cu_seqlens: Optional[Tensor]):
    """Keyword arguments win; ``seq_meta`` {"seq_idx": ..., "cu_seqlens": ...} fills the gaps."""
    if seq_meta:
        if seq_idx is None:
            seq_idx = seq_meta.get("seq_idx")
        if cu_seqlens is None:
            cu_seqlens = seq_meta.get("cu_seqlens")
    return seq_idx, cu_seqlens


# =============================================================================================
# 1. Depthwise causal conv
# =============================================================================================

def dw_causal_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, activation="silu", *,
                   seq_idx: Optional[Tensor] = None, initial_states: Optional[Tensor] = None,
                   return_final_states: bool = False):
    """Depthwise causal 1-D convolution over the sequence (Mamba's short conv).

    x (B, D, L); weight (D, W); bias (D,); activation None or "silu"/"swish";
    seq_idx (B, L) integer; initial_states (B, D, W-1): the W-1 inputs preceding token 0.

        y[b, d, t] = bias[d] + sum_k weight[d, k] * xx[b, d, t - (W-1) + k]

    where xx is x preceded by initial_states (zeros when None). With seq_idx, input j
    reaches output t only if seq_idx[b, j] == seq_idx[b, t]; the W-1 positions before
    token 0 count as belonging to token 0's sequence. Then silu if ``activation``.

    Returns y (B, D, L) in x.dtype, or (y, final_states) with final_states (B, D, W-1) in
    x.dtype: the last W-1 inputs (the window a next call needs as initial_states), taken
    from initial_states when L < W-1, and zeroed at positions outside the last token's
    sequence when seq_idx is given.
    """
    ct = _compute_dtype(x, weight, bias, initial_states)
    batch, dim, L = x.shape
    W = weight.shape[-1]
    x_c, weight_c = x.to(ct), weight.to(ct)

    # the inputs with their W-1 predecessors: (B, D, W-1+L)
    if initial_states is None:
        before = x_c.new_zeros(batch, dim, W - 1)
    else:
        before = initial_states.to(ct)
    xx = torch.cat([before, x_c], dim=-1)

    # the W inputs seen by each output token: windows[b, d, t, k] = xx[b, d, t + k]   (B, D, L, W)
    windows = xx.unfold(-1, W, 1)
    if seq_idx is not None:
        # sequence id of every position of xx (the W-1 before token 0 belong to token 0): (B, W-1+L)
        seq_xx = torch.cat([seq_idx[:, :1].expand(batch, W - 1), seq_idx], dim=-1)
        # keep[b, t, k]: input t+k of xx is in the same sequence as output t   (B, L, W)
        keep = seq_xx.unfold(-1, W, 1) == seq_idx[:, :, None]
        windows = windows * keep[:, None].to(ct)

    # (B, D, L)
    y = torch.einsum("bdtk,dk->bdt", windows, weight_c)
    if bias is not None:
        y = y + bias.to(ct)[:, None]
    if _uses_silu(activation):
        y = F.silu(y)
    y = y.to(x.dtype)
    if not return_final_states:
        return y

    # the last W-1 positions of xx: (B, D, W-1)
    final = xx[..., xx.shape[-1] - (W - 1):]
    if seq_idx is not None:
        # (B, W-1)
        in_last_seq = seq_xx[:, seq_xx.shape[-1] - (W - 1):] == seq_idx[:, -1:]
        final = final * in_last_seq[:, None].to(ct)
    return y, final.to(x.dtype)


def dw_causal_conv_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                          activation=None, *, conv_state_indices: Optional[Tensor] = None) -> Tensor:
    """Decode step(s) of the causal conv with a rolling window ``conv_state``, updated in place.

    x (B, D) or (B, D, Lnew); conv_state (Bs, D, S) with S >= W-1, any strides (e.g. a
    channels-last transposed view); weight (D, W); bias (D,); activation None or "silu";
    conv_state_indices (B,) int: the conv_state row used by batch row b (default: b).

    For each new token the output is the conv over the last W inputs (state, then the new
    ones). The state row is shifted left by Lnew and the new inputs are written at its end
    (in conv_state.dtype). A negative index marks a padding row: its output is zeros and no
    state row is touched. Returns y shaped like x, in x.dtype.
    """
    ct = _compute_dtype(x, conv_state, weight, bias)
    single_token = x.dim() == 2
    # (B, D, Lnew)
    x_c = (x.unsqueeze(-1) if single_token else x).to(ct)
    batch, dim, L_new = x_c.shape
    W = weight.shape[-1]
    S = conv_state.shape[-1]

    # the state row of each batch row; padding rows (negative index) read row 0 and are masked
    if conv_state_indices is None:
        rows, valid = None, None
        # (B, D, S)
        state = conv_state.to(ct)
    else:
        rows = conv_state_indices.to(torch.int64)
        valid = rows >= 0
        state = conv_state[rows.clamp(min=0)].to(ct)

    # everything seen so far, oldest first: (B, D, S + Lnew)
    full = torch.cat([state, x_c], dim=-1)
    # the W inputs ending at each new token: (B, D, Lnew, W)
    windows = full[..., S - (W - 1):].unfold(-1, W, 1)
    # (B, D, Lnew)
    y = torch.einsum("bdtk,dk->bdt", windows, weight.to(ct))
    if bias is not None:
        y = y + bias.to(ct)[:, None]
    if _uses_silu(activation):
        y = F.silu(y)

    # the state after the new tokens: the last S inputs   (B, D, S)
    new_state = full[..., full.shape[-1] - S:].to(conv_state.dtype)
    if rows is None:
        conv_state.copy_(new_state)
    else:
        conv_state[rows[valid]] = new_state[valid]
    if valid is not None:
        y = torch.where(valid[:, None, None], y, torch.zeros_like(y))
    y = y.to(x.dtype)
    return y.squeeze(-1) if single_token else y


# =============================================================================================
# 2. Mamba-1 selective scan
# =============================================================================================

def _bc_per_channel(M: Tensor, batch: int, dim: int, L: int) -> Tensor:
    """B or C in any accepted layout -> a (B or 1, D, N, L) view/tensor, one row per channel.

    (D, N) time-invariant   -> (1, D, N, L) broadcast along L (no copy)
    (B, N, L)               -> (B, 1, N, L), shared by all channels
    (B, G, N, L)            -> (B, D, N, L), channel d uses group d // (D / G)
    """
    if M.dim() == 2:
        return M[None, :, :, None].expand(1, dim, M.shape[1], L)
    if M.dim() == 3:
        return M[:, None]
    groups = M.shape[1]
    assert dim % groups == 0, f"D={dim} is not a multiple of G={groups}"
    return M.repeat_interleave(dim // groups, dim=1)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None, dt_bias: Optional[Tensor] = None, softplus: bool = False,
                   return_last_state: bool = False, *, initial_state: Optional[Tensor] = None,
                   seq_idx: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None):
    """Mamba-1 selective scan, as a loop over time.

    u, delta (B, D, L); A (D, N) real; B, C each (D, N) time-invariant, or (B, N, L), or
    (B, G, N, L) with channel d using group d // (D/G); D (D,); z (B, D, L); dt_bias (D,).

        dt  = delta + dt_bias;  dt = softplus(dt) (threshold 20) if ``softplus``
        h_t = exp(dt_t * A) * h_{t-1} + dt_t * u_t * B_t        (h is (D, N) per batch row)
        y_t = sum_n h_t * C_t + D * u_t;   y *= silu(z) if z is given

    h before token 0 is initial_state (B, D, N), or zeros.
    Varlen: with seq_idx (B, L) the state restarts from zeros at each token whose seq_idx
    differs from the previous token's (initial_state only reaches the first segment). With
    cu_seqlens (nseq+1,) (B == 1) the sequences are packed along L; each starts from its own
    initial_state[s] (initial_state is then (nseq, D, N)) or zeros.

    Returns y (B, D, L) in u.dtype, or (y, last_state) where last_state is the state after
    the last token: (B, D, N), or with cu_seqlens (nseq, D, N) per sequence (an empty
    sequence keeps its initial state). last_state is float32 (float64 for float64 inputs).
    """
    ct = _compute_dtype(u, delta, A, B, C, D, z, dt_bias, initial_state)
    batch, dim, L = u.shape
    N = A.shape[-1]
    u_c, A_c = u.to(ct), A.to(ct)
    # (B, D, L)
    dt = _transform_dt(delta.to(ct), None if dt_bias is None else dt_bias.to(ct)[:, None], softplus)
    # (B or 1, D, N, L)
    B_c = _bc_per_channel(B.to(ct), batch, dim, L)
    C_c = _bc_per_channel(C.to(ct), batch, dim, L)

    # segment id of each token (B, L), and the state a new segment starts from
    zeros = u_c.new_zeros(batch, dim, N)
    if cu_seqlens is not None:
        assert batch == 1, "cu_seqlens needs the sequences packed into one row (B == 1)"
        bounds = _sequence_bounds(cu_seqlens)
        segment = _sequence_of_token(cu_seqlens, L)[None]
        # (nseq, D, N): where each packed sequence starts
        starts = initial_state.to(ct) if initial_state is not None else u_c.new_zeros(len(bounds), dim, N)
        h = starts[segment[:, 0]] if L > 0 else zeros
        last_token_of = {end - 1: s for s, (start, end) in enumerate(bounds) if end > start}
        last_states = {}
    else:
        segment = seq_idx if seq_idx is not None else torch.zeros(batch, L, dtype=torch.long, device=u.device)
        h = initial_state.to(ct) if initial_state is not None else zeros

    ys = []
    for t in range(L):
        if t > 0:
            # (B, 1, 1): does token t start a new segment?
            new_segment = (segment[:, t] != segment[:, t - 1])[:, None, None]
            fresh = starts[segment[:, t]] if cu_seqlens is not None else zeros
            h = torch.where(new_segment, fresh, h)
        # (B, D, N)
        decay = torch.exp(dt[:, :, t, None] * A_c)
        # (B, D, N)
        inject = (dt[:, :, t] * u_c[:, :, t])[:, :, None] * B_c[..., t]
        h = decay * h + inject
        # (B, D)
        ys.append((h * C_c[..., t]).sum(-1))
        if cu_seqlens is not None and t in last_token_of:
            last_states[last_token_of[t]] = h[0]

    # (B, D, L)
    y = torch.stack(ys, dim=-1) if ys else u_c.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + D.to(ct)[:, None] * u_c
    y = _gate(y, _up(z, ct)).to(u.dtype)
    if not return_last_state:
        return y
    if cu_seqlens is not None:
        # (nseq, D, N)
        h = torch.stack([last_states.get(s, starts[s]) for s in range(len(bounds))])
    return y, h


# =============================================================================================
# 3. One decode step (Mamba-1 and Mamba-2 layouts)
# =============================================================================================

def selective_state_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                         D: Optional[Tensor] = None, z: Optional[Tensor] = None, dt_bias: Optional[Tensor] = None,
                         softplus: bool = True, *, state_batch_indices: Optional[Tensor] = None) -> Tensor:
    """One recurrent decode step; ``state`` is updated in place, in its own dtype.

    Mamba-1 layout: state (Bs, D, N); x, dt, z (B, D); A (D, N); B, C (B, N) or (B, G, N)
    (channel d uses group d // (D/G)); D, dt_bias (D,).
    Mamba-2 layout: state (Bs, H, P, N); x, z (B, H, P); dt (B, H, P) or (B, H);
    A (H, P, N) or (H,); B, C (B, G, N) (head h uses group h // (H/G));
    D, dt_bias (H, P) or (H,). Per-head values broadcast over P (and N for A); stride-0
    expanded views work like any tensor.

        dt' = dt + dt_bias;  softplus (threshold 20) if ``softplus``
        state = state * exp(dt' * A) + (dt' * x)[..., None] * B
        y = sum_n state * C + D * x;   y *= silu(z) if z is given

    state_batch_indices (B,) int: state row of batch row b (default b); a negative index
    is padding: y is zeros there and no state row is touched.
    Returns y shaped like x, in x.dtype. Computed in float32 (float64 for float64 inputs)
    from the state's stored value; the updated state is rounded to state.dtype when stored.
    """
    ct = _compute_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    mamba1 = state.dim() == 3
    if mamba1:
        # Mamba-1 is Mamba-2 with H = D heads of size P = 1.
        state, x, A = state.unsqueeze(2), x.unsqueeze(-1), A.unsqueeze(1)
        z = None if z is None else z.unsqueeze(-1)
        if B.dim() == 2:
            B, C = B.unsqueeze(1), C.unsqueeze(1)
    # per-head values broadcast over P (and N)
    if dt.dim() == 2:
        dt = dt.unsqueeze(-1)
    if A.dim() == 1:
        A = A[:, None, None]
    if D is not None and D.dim() == 1:
        D = D[:, None]
    if dt_bias is not None and dt_bias.dim() == 1:
        dt_bias = dt_bias[:, None]

    heads = state.shape[1]
    groups = B.shape[1]
    assert heads % groups == 0, f"H={heads} is not a multiple of G={groups}"
    # (B, H, 1, N): the group of each head
    B_h = B.to(ct).repeat_interleave(heads // groups, dim=1)[:, :, None, :]
    C_h = C.to(ct).repeat_interleave(heads // groups, dim=1)[:, :, None, :]

    if state_batch_indices is None:
        rows, valid = None, None
        # (B, H, P, N)
        old = state.to(ct)
    else:
        rows = state_batch_indices.to(torch.int64)
        valid = rows >= 0
        old = state[rows.clamp(min=0)].to(ct)

    x_c = x.to(ct)
    # (B, H, P)
    dt_c = _transform_dt(dt.to(ct), _up(dt_bias, ct), softplus)
    # (B, H, P, N)
    new = old * torch.exp(dt_c[..., None] * A.to(ct)) + (dt_c * x_c)[..., None] * B_h
    # (B, H, P)
    y = (new * C_h).sum(-1)
    if D is not None:
        y = y + D.to(ct) * x_c
    y = _gate(y, _up(z, ct))

    if rows is None:
        state.copy_(new.to(state.dtype))
    else:
        state[rows[valid]] = new[valid].to(state.dtype)
        y = torch.where(valid[:, None, None], y, torch.zeros_like(y))
    y = y.to(x.dtype)
    return y.squeeze(-1) if mamba1 else y


# =============================================================================================
# 4. Mamba-2 / SSD chunked scan
# =============================================================================================

def _ssd_inputs(X, dt, A, B, C, D, z, initial_states, dt_bias, dt_softplus, dt_limit):
    """Upcast, transform dt, and give B/C one row per head.

    Returns x (B, L, H, P), dt' (B, L, H), A (H,), B, C (B, L, H, N), D, z, initial_states,
    all in the compute dtype, with dt' = clamp(softplus?(dt + dt_bias), *dt_limit)."""
    ct = _compute_dtype(X, dt, A, B, C, D, z, initial_states, dt_bias)
    heads = X.shape[2]
    groups = B.shape[2]
    assert heads % groups == 0, f"H={heads} is not a multiple of G={groups}"
    dt = _transform_dt(dt.to(ct), _up(dt_bias, ct), dt_softplus)
    # the limit is always applied: the default (0, inf) turns a negative dt into 0
    dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    # (B, L, H, N): head h uses group h // (H / G)
    B_h = B.to(ct).repeat_interleave(heads // groups, dim=2)
    C_h = C.to(ct).repeat_interleave(heads // groups, dim=2)
    return X.to(ct), dt, A.to(ct), B_h, C_h, _up(D, ct), _up(z, ct), _up(initial_states, ct)


def _ssd_output(y: Tensor, x: Tensor, D: Optional[Tensor], z: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    """y (B, L, H, P) + D * x, gated by silu(z), cast to ``dtype``. D is (H,) or (H, P)."""
    if D is not None:
        y = y + (D[:, None] if D.dim() == 1 else D) * x
    return _gate(y, z).to(dtype)


def _ssd_returns(y, final_states, varlen_states, return_final_states, return_varlen_states):
    if return_varlen_states:
        assert varlen_states is not None, "return_varlen_states needs cu_seqlens"
    outs = (y,) + ((final_states,) if return_final_states else ()) + \
        ((varlen_states,) if return_varlen_states else ())
    return outs[0] if len(outs) == 1 else outs


def _segment_ids(seq_idx: Optional[Tensor], batch: int, L: int, device) -> Tensor:
    """(B, L) int64: 0, 1, 2, ... counting the changes of seq_idx along each row."""
    if seq_idx is None:
        return torch.zeros(batch, L, dtype=torch.long, device=device)
    # (B, L): 1 where a token's seq_idx differs from the previous token's
    changes = torch.cat([torch.zeros_like(seq_idx[:, :1]), seq_idx[:, 1:] != seq_idx[:, :-1]], dim=-1)
    return changes.to(torch.long).cumsum(-1)


def _segsum(a: Tensor) -> Tensor:
    """a (..., T) -> (..., T, T) with out[..., i, j] = a[j+1] + ... + a[i] for j < i, 0 for j >= i.

    Summed directly (a cumsum over masked copies), not as a difference of two cumsums, which
    would lose precision when the cumsum grows large."""
    T = a.shape[-1]
    strictly_lower = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    # copies[..., i, j] = a[i] where i > j, else 0: (..., T, T)
    copies = a[..., :, None].expand(*a.shape, T).masked_fill(~strictly_lower, 0)
    # summing down the rows: out[i, j] = sum of a[k] for j < k <= i
    return copies.cumsum(dim=-2)


def _ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, segment: Tensor, chunk_size: int,
                 chunk_initial_states: dict):
    """The chunked SSD algorithm (the "state space dual" form), on a padded row layout.

    x (B, L, H, P), dt (B, L, H) (already transformed), A (H,), B, C (B, L, H, N) one row per
    head, segment (B, L) int: segment id of each token (state resets where it changes), with
    L a multiple of chunk_size. chunk_initial_states {c: (B or 1, H, P, N)}: the state to start
    from when a segment starts exactly at the first token of chunk c (zeros otherwise).

    Returns y (B, L, H, P) without the D / z terms, and states_out (B, nchunks, H, P, N): the
    state after the last token of every chunk.
    """
    batch, L, heads, P = x.shape
    N = B.shape[-1]
    T = chunk_size
    nc = L // T

    # ---- cut the sequence into chunks of T tokens
    # (B, c, T, H, P), (B, c, T, H), (B, c, T, H, N), (B, c, T)
    x = x.reshape(batch, nc, T, heads, P)
    dt = dt.reshape(batch, nc, T, heads)
    B = B.reshape(batch, nc, T, heads, N)
    C = C.reshape(batch, nc, T, heads, N)
    seg = segment.reshape(batch, nc, T)
    # log-decay of every token, heads first: (B, H, c, T)
    dA = (dt * A).permute(0, 3, 1, 2)

    # ---- 1. decay between every pair of tokens of a chunk
    # decay[b, h, c, i, j] = exp(dA_{j+1} + ... + dA_i) for j <= i (1 on the diagonal), 0 for j > i
    # (B, H, c, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp(_segsum(dA)) * causal
    # same_seg[b, c, i, j]: tokens i and j of chunk c are in one segment   (B, c, T, T)
    same_seg = (seg[:, :, :, None] == seg[:, :, None, :]).to(x.dtype)

    # ---- 2. intra-chunk output: masked "attention" (C_i . B_j) * decay_ij * dt_j applied to x_j
    # (B, H, c, T, T)
    scores = torch.einsum("bcihn,bcjhn->bhcij", C, B)
    attn = scores * decay * same_seg[:, None] * dt.permute(0, 3, 1, 2)[:, :, :, None, :]
    # (B, c, T, H, P)
    y_intra = torch.einsum("bhcij,bcjhp->bcihp", attn, x)

    # ---- 3. state at the end of each chunk, from that chunk's own tokens (starting from zero),
    # counting only tokens in the segment of the chunk's last token
    # (B, H, c, T): decay from token j to the end of its chunk, masked to the last token's segment
    to_end = decay[..., -1, :] * same_seg[:, None, :, -1, :]
    # (B, c, H, P, N)
    chunk_states = torch.einsum("bhcj,bcjh,bcjhp,bcjhn->bchpn", to_end, dt, x, B)

    # ---- 4. pass the states from chunk to chunk (sequential over chunks)
    # (B, H, c, T): decay from the chunk start through token i
    from_start = torch.exp(torch.cumsum(dA, dim=-1))
    states_in, states_out = _pass_states(chunk_states, from_start[..., -1], seg, chunk_initial_states)

    # ---- 5. inter-chunk output: C_i . (state entering the chunk) decayed to token i,
    # for the tokens in the segment of the chunk's first token (the segment that state belongs to)
    # (B, H, c, T)
    reach = from_start * (seg == seg[:, :, :1]).to(x.dtype)[:, None]
    # (B, c, T, H, P)
    y_inter = torch.einsum("bcihn,bchpn,bhci->bcihp", C, states_in, reach)

    # (B, L, H, P)
    y = (y_intra + y_inter).reshape(batch, L, heads, P)
    return y, states_out


def _pass_states(chunk_states: Tensor, chunk_decay: Tensor, seg: Tensor, chunk_initial_states: dict):
    """The state-passing loop over chunks.

    chunk_states (B, c, H, P, N): each chunk's contribution to the state at its end;
    chunk_decay (B, H, c): exp(sum of dA over the chunk); seg (B, c, T) segment ids.
    Returns states_in (state entering each chunk, belonging to the segment of the chunk's
    first token) and states_out (state after each chunk's last token), both (B, c, H, P, N).
    """
    batch, nc = chunk_states.shape[:2]
    zeros = torch.zeros_like(chunk_states[:, 0])
    state = zeros
    states_in, states_out = [], []
    for c in range(nc):
        # (B,): does a segment start at the first token of chunk c?
        if c == 0:
            starts = torch.ones(batch, dtype=torch.bool, device=seg.device)
        else:
            starts = seg[:, c, 0] != seg[:, c - 1, -1]
        start_state = chunk_initial_states.get(c, zeros)
        # (B, H, P, N)
        state = torch.where(starts[:, None, None, None], start_state, state)
        states_in.append(state)
        # the entering state survives to the chunk's end if no segment starts inside the chunk
        survives = (seg[:, c, -1] == seg[:, c, 0]).to(state.dtype)
        # (B, H, P, N)
        state = chunk_states[:, c] + (chunk_decay[:, :, c] * survives[:, None])[..., None, None] * state
        states_out.append(state)
    return torch.stack(states_in, dim=1), torch.stack(states_out, dim=1)


def _pad_to_chunks(t: Tensor, L_padded: int) -> Tensor:
    """Zero-pad dim 1 (the sequence) of t up to L_padded."""
    pad = L_padded - t.shape[1]
    if pad == 0:
        return t
    return torch.cat([t, t.new_zeros(t.shape[0], pad, *t.shape[2:])], dim=1)


def _ssd_rows(x, dt, A, B, C, chunk_size, seq_idx, initial_states):
    """Chunked SSD on the rows as given (sequences in a row kept apart by seq_idx masks).

    Returns y (B, L, H, P) and final_states (B, H, P, N)."""
    batch, L, heads, P = x.shape
    L_padded = max(1, -(-L // chunk_size)) * chunk_size
    # segment ids; padding tokens continue the last segment (and, with dt = 0, leave the state alone)
    segment = _segment_ids(seq_idx, batch, L, x.device)
    segment = torch.cat([segment, segment[:, -1:].expand(batch, L_padded - L)], dim=1) if L > 0 else \
        torch.zeros(batch, L_padded, dtype=torch.long, device=x.device)
    inits = {} if initial_states is None else {0: initial_states}
    y, states_out = _ssd_chunked(_pad_to_chunks(x, L_padded), _pad_to_chunks(dt, L_padded), A,
                                 _pad_to_chunks(B, L_padded), _pad_to_chunks(C, L_padded),
                                 segment, chunk_size, inits)
    return y[:, :L], states_out[:, -1]


def _ssd_packed(x, dt, A, B, C, chunk_size, cu_seqlens, initial_states):
    """Chunked SSD on sequences packed along L by cu_seqlens (B == 1).

    Each non-empty sequence is moved to start on a chunk boundary and zero-padded to whole
    chunks, so each starts from its own initial state in the state-passing loop and its final
    state is the state leaving its last chunk. Padding tokens have dt = 0: they change nothing.

    Returns y (1, L, H, P), final_states (1, H, P, N), varlen_states (nseq, H, P, N)."""
    _, L, heads, P = x.shape
    N = B.shape[-1]
    T = chunk_size
    bounds = _sequence_bounds(cu_seqlens)
    zeros = x.new_zeros(heads, P, N)
    # where each token goes in the chunk-aligned layout; per sequence its first and last chunk
    positions, segment, inits, last_chunk = [], [], {}, {}
    chunk = 0
    for s, (start, end) in enumerate(bounds):
        if end == start:
            continue
        n_chunks = -(-(end - start) // T)
        positions.append(torch.arange(chunk * T, chunk * T + end - start, device=x.device))
        segment.append(torch.full((n_chunks * T,), s, dtype=torch.long, device=x.device))
        if initial_states is not None:
            inits[chunk] = initial_states[s][None]
        chunk += n_chunks
        last_chunk[s] = chunk - 1
    if chunk == 0:  # no tokens at all
        varlen = initial_states if initial_states is not None else zeros.expand(len(bounds), heads, P, N)
        return x.new_zeros(1, 0, heads, P), x.new_zeros(1, heads, P, N), varlen.clone()
    # (L,)
    positions = torch.cat(positions)
    L_aligned = chunk * T

    def aligned(t):
        # t (1, L, ...) -> (1, L_aligned, ...), zeros between sequences
        return t.new_zeros(1, L_aligned, *t.shape[2:]).index_copy(1, positions, t)

    y, states_out = _ssd_chunked(aligned(x), aligned(dt), A, aligned(B), aligned(C),
                                 torch.cat(segment)[None], T, inits)
    # (nseq, H, P, N)
    varlen = torch.stack([states_out[0, last_chunk[s]] if s in last_chunk else
                          (initial_states[s] if initial_states is not None else zeros)
                          for s in range(len(bounds))])
    return y[:, positions], states_out[:, -1], varlen


def ssd_chunk_scan(X: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
                   D: Optional[Tensor] = None, z: Optional[Tensor] = None, seq_meta: Optional[dict] = None,
                   initial_states: Optional[Tensor] = None, *, dt_bias: Optional[Tensor] = None,
                   dt_softplus: bool = False, dt_limit: Sequence[float] = (0.0, float("inf")),
                   seq_idx: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None,
                   return_final_states: bool = False, return_varlen_states: bool = False):
    """Mamba-2 (SSD) scan, computed with the chunked algorithm.

    X (B, L, H, P); dt (B, L, H); A (H,); B, C (B, L, G, N) with head h using group
    h // (H/G); D (H,) or (H, P); z (B, L, H, P); dt_bias (H,); initial_states (B, H, P, N),
    or (nseq, H, P, N) with cu_seqlens; seq_idx (B, L) int; cu_seqlens (nseq+1,) with B == 1.
    seq_meta: optional {"seq_idx": ..., "cu_seqlens": ...}, used for those not passed by keyword.

        dt' = clamp(softplus?(dt + dt_bias), *dt_limit)     (the clamp is always applied)
        H_t = exp(dt'_t * A) * H_{t-1} + dt'_t * x_t (outer) B_t       (H_t is (P, N) per head)
        y_t = H_t C_t + D * x_t;   y *= silu(z) if z is given

    The state restarts at every change of seq_idx, and at every sequence start with
    cu_seqlens (from that sequence's initial state). Any L works (padded to whole chunks).

    Algorithm: per chunk of ``chunk_size`` tokens, the cumulative sums of dt'*A give the
    decays; the intra-chunk output is the masked "attention" (C B^T * exp(segment sums) * dt')
    applied to X; each chunk's own state is passed to the next chunks in a short sequential
    loop; the state entering a chunk adds C . state . exp(cumsum) to its outputs.

    Returns Y (B, L, H, P) in X.dtype, then final_states (B, H, P, N) if
    ``return_final_states``, then varlen_states (nseq, H, P, N) if ``return_varlen_states``
    (needs cu_seqlens); states are float32 (float64 for float64 inputs). Y alone when no
    state is asked for.
    """
    seq_idx, cu_seqlens = _resolve_seq_meta(seq_meta, seq_idx, cu_seqlens)
    x, dt_c, A_c, B_h, C_h, D_c, z_c, init = _ssd_inputs(X, dt, A, B, C, D, z, initial_states,
                                                         dt_bias, dt_softplus, dt_limit)
    if cu_seqlens is None:
        y, final_states = _ssd_rows(x, dt_c, A_c, B_h, C_h, chunk_size, seq_idx, init)
        varlen_states = None
    else:
        assert X.shape[0] == 1, "cu_seqlens needs the sequences packed into one row (B == 1)"
        y, final_states, varlen_states = _ssd_packed(x, dt_c, A_c, B_h, C_h, chunk_size, cu_seqlens, init)
    y = _ssd_output(y, x, D_c, z_c, X.dtype)
    return _ssd_returns(y, final_states, varlen_states, return_final_states, return_varlen_states)


def ssd_scan_sequential(X: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
                        D: Optional[Tensor] = None, z: Optional[Tensor] = None, seq_meta: Optional[dict] = None,
                        initial_states: Optional[Tensor] = None, *, dt_bias: Optional[Tensor] = None,
                        dt_softplus: bool = False, dt_limit: Sequence[float] = (0.0, float("inf")),
                        seq_idx: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None,
                        return_final_states: bool = False, return_varlen_states: bool = False):
    """The same op as :func:`ssd_chunk_scan` (same arguments and results), computed as the plain
    token-by-token recurrence. ``chunk_size`` is accepted and ignored."""
    seq_idx, cu_seqlens = _resolve_seq_meta(seq_meta, seq_idx, cu_seqlens)
    x, dt_c, A_c, B_h, C_h, D_c, z_c, init = _ssd_inputs(X, dt, A, B, C, D, z, initial_states,
                                                         dt_bias, dt_softplus, dt_limit)
    batch, L, heads, P = x.shape
    N = B_h.shape[-1]
    zeros = x.new_zeros(batch, heads, P, N)
    if cu_seqlens is not None:
        assert batch == 1, "cu_seqlens needs the sequences packed into one row (B == 1)"
        bounds = _sequence_bounds(cu_seqlens)
        segment = _sequence_of_token(cu_seqlens, L)[None]
        # (nseq, H, P, N): where each packed sequence starts
        starts = init if init is not None else x.new_zeros(len(bounds), heads, P, N)
        state = starts[segment[:, 0]] if L > 0 else zeros
        last_token_of = {end - 1: s for s, (start, end) in enumerate(bounds) if end > start}
        last_states = {}
    else:
        segment = seq_idx if seq_idx is not None else torch.zeros(batch, L, dtype=torch.long, device=x.device)
        state = init if init is not None else zeros

    ys = []
    for t in range(L):
        if t > 0:
            # (B, 1, 1, 1)
            new_segment = (segment[:, t] != segment[:, t - 1])[:, None, None, None]
            fresh = starts[segment[:, t]] if cu_seqlens is not None else zeros
            state = torch.where(new_segment, fresh, state)
        # (B, H)
        decay = torch.exp(dt_c[:, t] * A_c)
        # (B, H, P, N) = (B, H, P, 1) * (B, H, 1, N)
        inject = (dt_c[:, t, :, None] * x[:, t])[..., None] * B_h[:, t, :, None, :]
        state = decay[..., None, None] * state + inject
        # (B, H, P)
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C_h[:, t]))
        if cu_seqlens is not None and t in last_token_of:
            last_states[last_token_of[t]] = state[0]

    # (B, L, H, P)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(batch, 0, heads, P)
    y = _ssd_output(y, x, D_c, z_c, X.dtype)
    varlen_states = None
    if cu_seqlens is not None:
        varlen_states = torch.stack([last_states.get(s, starts[s]) for s in range(len(bounds))])
    return _ssd_returns(y, state, varlen_states, return_final_states, return_varlen_states)


# =============================================================================================
# 5. Norms
# =============================================================================================

def _normalize(s: Tensor, eps: float, is_rms: bool) -> Tensor:
    """Normalize over the last dim: LayerNorm (mean / biased variance) or RMSNorm."""
    if is_rms:
        return s * torch.rsqrt(s.square().mean(-1, keepdim=True) + eps)
    mean = s.mean(-1, keepdim=True)
    var = (s - mean).square().mean(-1, keepdim=True)
    return (s - mean) * torch.rsqrt(var + eps)


def fused_layer_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], residual: Optional[Tensor] = None,
                     is_rms: bool = False, eps: float = 1e-5, prenorm: bool = True, residual_in_fp32: bool = True):
    """Add-then-norm: s = x + residual; y = norm(s) * weight + bias.

    x, residual (..., D); weight, bias (D,) (either may be None). norm is LayerNorm (mean and
    biased variance over the last dim) or, with ``is_rms``, RMSNorm s / sqrt(mean(s^2) + eps).
    y is in x.dtype. residual_out = s, stored in residual.dtype when a residual is given,
    else in float32 (float64 for float64 inputs) when ``residual_in_fp32``, else in x.dtype.
    Returns (y, residual_out) if ``prenorm`` else y.
    """
    ct = _compute_dtype(x, weight, bias, residual)
    # (..., D)
    s = x.to(ct) if residual is None else x.to(ct) + residual.to(ct)
    y = _normalize(s, eps, is_rms)
    if weight is not None:
        y = y * weight.to(ct)
    if bias is not None:
        y = y + bias.to(ct)
    y = y.to(x.dtype)
    if not prenorm:
        return y
    if residual is not None:
        residual_dtype = residual.dtype
    else:
        residual_dtype = ct if residual_in_fp32 else x.dtype
    return y, s.to(residual_dtype)


def gated_rms_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor] = None, z: Optional[Tensor] = None,
                   eps: float = 1e-6, group_size: Optional[int] = None, norm_before_gate: bool = True,
                   is_rms_norm: bool = True) -> Tensor:
    """Gated group norm of Mamba-2 (``RMSNormGated``).

    x, z (..., D); weight, bias (D,). The normalization (RMSNorm, or LayerNorm when
    ``is_rms_norm`` is False) runs independently over contiguous groups of ``group_size``
    features (None: the whole last dim).
        norm_before_gate=True:  out = norm(x) * weight (+ bias) * silu(z)
        norm_before_gate=False: out = norm(x * silu(z)) * weight (+ bias)
    Output in x.dtype.
    """
    ct = _compute_dtype(x, weight, bias, z)
    dim = x.shape[-1]
    group_size = dim if group_size is None else group_size
    assert dim % group_size == 0, f"D={dim} is not a multiple of group_size={group_size}"
    h = x.to(ct)
    z_c = _up(z, ct)
    if z_c is not None and not norm_before_gate:
        h = _gate(h, z_c)
    # (..., D / group_size, group_size)
    grouped = h.reshape(*h.shape[:-1], dim // group_size, group_size)
    out = _normalize(grouped, eps, is_rms_norm).reshape(h.shape)
    if weight is not None:
        out = out * weight.to(ct)
    if bias is not None:
        out = out + bias.to(ct)
    if z_c is not None and norm_before_gate:
        out = _gate(out, z_c)
    return out.to(x.dtype)
