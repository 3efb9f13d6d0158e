"""The SSD backward composed of forward scans (ssm/ops/ssd_bwd.py, used by the CUDA backend) on
the CPU in float64: its algebra against the reference's autograd, with a token-by-token scan
standing in for the CUDA forward kernel (same contract: unit injection, chunk entering states)."""
import pytest
import torch

from ssm.ops import ssd_bwd
from ssm.ops.python import reference

F64 = torch.float64


def sequential_scan(chunk):
    """The kernel's contract in float64: y, final state, and the state entering each chunk as the
    chunk's first run sees it (zero where a run starts at the chunk's first token)."""
    def scan(x, delta, A, B, C, init, seq_idx, unit, want_final):
        b, L, H, P = x.shape
        G, N = B.shape[2:]
        Bh, Ch = B.repeat_interleave(H // G, 2), C.repeat_interleave(H // G, 2)
        y = torch.zeros(b, L, H, P, dtype=F64)
        h_in = torch.zeros(b, -(-L // chunk), H, P, N, dtype=F64)
        state = init.clone() if init is not None else torch.zeros(b, H, P, N, dtype=F64)
        for t in range(L):
            if t > 0 and seq_idx is not None:
                state = torch.where((seq_idx[:, t] != seq_idx[:, t - 1])[:, None, None, None], 0.0, state)
            if t % chunk == 0:
                h_in[:, t // chunk] = state
            weight = torch.ones_like(delta[:, t]) if unit else delta[:, t]
            state = (torch.exp(delta[:, t] * A)[..., None, None] * state
                     + (weight[..., None] * x[:, t])[..., None] * Bh[:, t, :, None, :])
            y[:, t] = torch.einsum("bhpn,bhn->bhp", state, Ch[:, t])
        return y, state if want_final else None, h_in
    return scan


@pytest.mark.parametrize("case", [
    dict(L=20, H=2, G=1, init=True),
    dict(L=21, H=4, G=2, seq=True, init=True),
    dict(L=19, H=2, G=1, plain=True),
    dict(L=40, H=2, G=1, seq=True, chunk=16),
], ids=["init", "seq_idx_groups", "plain", "seq_idx_chunk16"])
def test_composed_backward_equals_reference_autograd(case):
    L, H, G, P, N, chunk = case["L"], case["H"], case["G"], 3, 4, case.get("chunk", 8)
    plain = case.get("plain", False)
    x, z = torch.randn(2, L, H, P, dtype=F64), None if plain else torch.randn(2, L, H, P, dtype=F64)
    dt, A = torch.rand(2, L, H, dtype=F64) + 0.1, -torch.rand(H, dtype=F64) - 0.2
    B, C = torch.randn(2, L, G, N, dtype=F64), torch.randn(2, L, G, N, dtype=F64)
    D = None if plain else torch.randn(H, P, dtype=F64)
    bias = None if plain else torch.randn(H, dtype=F64) * 0.3
    init = torch.randn(2, H, P, N, dtype=F64) if case.get("init") else None
    seq_idx = torch.sort(torch.randint(0, 3, (2, L)), 1).values if case.get("seq") else None
    leaves = [None if t is None else t.clone().requires_grad_() for t in (x, dt, A, B, C, D, z, bias, init)]
    y, final = reference.ssd_chunk_scan(*leaves[:5], 16, D=leaves[5], z=leaves[6], dt_bias=leaves[7],
                                        initial_states=leaves[8], dt_softplus=True, dt_limit=(0.3, 1.5),
                                        seq_idx=seq_idx, return_final_states=True)
    dy, dfinal = torch.randn_like(y), None if plain else torch.randn_like(final)
    torch.autograd.backward([y, final] if dfinal is not None else [y], [dy, dfinal] if dfinal is not None else [dy])
    got = ssd_bwd.backward(sequential_scan(chunk), chunk, x, dt, A, B, C, D, z, bias, init, seq_idx, dy, dfinal,
                           True, 0.3, 1.5)
    names = ["dx", "ddt", "dA", "dB", "dC", "dD", "dz", "ddt_bias", "dinit"]
    for name, g, leaf in zip(names, got, leaves):
        assert (g is None) == (leaf is None), name
        if leaf is not None:
            # the composition accumulates in float32 where the CUDA path does (gate, dot products)
            err = ((g.double() - leaf.grad).norm() / leaf.grad.norm()).item()
            assert err < 1e-5, f"{name}: relative error {err:.3g}"
