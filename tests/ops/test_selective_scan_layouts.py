"""selective_scan with the layouts of the Mamba-1 projections (delta, z, u channels-last: stride 1
along D; B/C views of x_proj's output with stride 1 along N), forward and gradients against the
float64 reference; outputs and gradients keep their input's layout; the CUDA kernels' boundaries
(N 16 / 17, chunks of 16 steps, blocks of several warps)."""
import importlib

import pytest
import torch

import ssm.ops as ops
from ssm.ops.python import reference
from tests.ops.harness import assert_close, backends, device_of, use_backend

scan_module = importlib.import_module("ssm.ops.selective_scan")


def channels_last(batch, D, L, dtype, device, scale=1.0, shift=0.0):
    # (B, L, D) transposed: stride 1 along D
    return (torch.randn(batch, L, D, device=device) * scale + shift).to(dtype).transpose(1, 2)


def projected_bc(batch, N, L, dtype, device):
    # B, C (B, 1, N, L) as column slices of an x_proj output (B, L, rank + 2N)
    x_dbl = torch.randn(batch, L, 3 + 2 * N, device=device).to(dtype)
    return tuple(x_dbl[..., c:c + N].transpose(1, 2).unsqueeze(1) for c in (3, 3 + N))


def make(batch, D, L, N, dtype, device, u_last=True):
    u = channels_last(batch, D, L, dtype, device) if u_last else torch.randn(batch, D, L, device=device).to(dtype)
    B, C = projected_bc(batch, N, L, dtype, device)
    A = -torch.exp(torch.randn(D, N, device=device) * 0.5)
    return dict(u=u, delta=channels_last(batch, D, L, dtype, device, 0.5, -1.0), A=A, B=B, C=C,
                D=torch.randn(D, device=device), z=channels_last(batch, D, L, dtype, device),
                dt_bias=torch.randn(D, device=device) * 0.3)


def run(fn, inp, init=None):
    return fn(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"], inp["dt_bias"], True, True,
              initial_state=init)


def make_rows(batch, D, L, N, G, dtype, device, pad=0, z=True):
    # every row contiguous along L ((B, D, L); B/C (B, G, N, L)), rows padded by `pad` steps
    def rows(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape[:-1], L + pad, device=device) * scale + shift).to(dtype)[..., :L]
    return dict(u=rows(batch, D, L), delta=rows(batch, D, L, scale=0.5, shift=-1.0),
                A=-torch.exp(torch.randn(D, N, device=device) * 0.5), B=rows(batch, G, N, L), C=rows(batch, G, N, L),
                D=torch.randn(D, device=device), z=rows(batch, D, L) if z else None,
                dt_bias=torch.randn(D, device=device) * 0.3)


def check_grads(backend, inp, dtype, init=None, factor=2.0):
    names = [k for k, v in inp.items() if v is not None]
    leaves = {k: v if v is None else v.detach().clone().requires_grad_() for k, v in inp.items()}
    init_leaf = None if init is None else init.clone().requires_grad_()
    with use_backend(backend):
        y, last = run(ops.selective_scan, leaves, init_leaf)
        dy, dlast = torch.randn_like(y), torch.randn_like(last)
        torch.autograd.backward([y, last], [dy, dlast])
    ref = {k: v if v is None else v.detach().double().requires_grad_() for k, v in inp.items()}
    ref_init = None if init is None else init.double().requires_grad_()
    ry, rlast = run(reference.selective_scan, ref, ref_init)
    torch.autograd.backward([ry, rlast], [dy.double(), dlast.double()])
    assert_close(y, ry, dtype, "y")
    assert_close(last, rlast, dtype, "last_state")
    for k in names:
        assert_close(leaves[k].grad, ref[k].grad, dtype, f"d{k}", factor=factor)
    if backend != "reference" and inp["u"].is_contiguous():
        check_kernel_layouts(backend, inp, dy)
    if init is not None:
        assert_close(init_leaf.grad, ref_init.grad, dtype, "dinitial_state", factor=factor)


def order(t):
    # the dims of size > 1 from the smallest stride up: the layout, whatever the gaps (a channel slice of xz)
    return [d for s, d in sorted((s, d) for d, (s, n) in enumerate(zip(t.stride(), t.shape)) if n > 1)]


def check_kernel_layouts(backend, inp, dy):
    # the kernel path's buffers (what the fused Mamba-1 path gets): y like delta, du / ddelta / dz like u / delta / z
    with use_backend(backend):
        y = run(ops.selective_scan, inp)[0]
        grads = scan_module._bwd_impl(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"],
                                      inp["dt_bias"], None, None, None, dy, dy.new_empty(0), True, False)
    for g, k in ((y, "delta"), (grads[0], "u"), (grads[1], "delta"), (grads[6], "z")):
        assert order(g) == order(inp[k]), f"d{k} strides {g.stride()}, {k} {inp[k].stride()}"


def make_model_rows(batch, D, L, N, rank, dtype, device):
    # mamba_ssm's layout: z a channel slice of xz (B, 2D, L), B / C row slices of x_dbl^T (B, rank + 2N, L)
    inp = make_rows(batch, D, L, N, 1, dtype, device)
    inp["z"] = torch.randn(batch, 2 * D, L, device=device).to(dtype)[:, D:]
    x_dbl = torch.randn(batch, rank + 2 * N, L, device=device).to(dtype)
    inp["B"], inp["C"] = (x_dbl[:, c:c + N].unsqueeze(1) for c in (rank, rank + N))
    return inp


# Kernel forms picked by grid size or a switch, each forced: the row forward with one or two channels per thread, a
# thread per channel (w); the backward with two warps per 32 channels and one or two state entries per pass, four
# warps and one or two
FORMS = [*({"SSM_SCAN_ROWS": f} for f in "12w"),
         *({"SSM_SCAN_BWD_ILP": i, "SSM_SCAN_BWD_WARPS": w} for w in "24" for i in "01")]


@pytest.mark.cuda
@pytest.mark.parametrize("form", FORMS, ids=lambda f: "-".join(f"{k[9:]}{v}" for k, v in f.items()))
@pytest.mark.parametrize("case", ["rows", "model", "odd_n"])
def test_kernel_forms_cuda(monkeypatch, form, case):
    # odd_n: N 13, an odd number of state entries for the last warp (the two-entry pass's idle second entry)
    for k, v in form.items():
        monkeypatch.setenv(k, v)
    dev, dt = torch.device("cuda"), torch.bfloat16
    if case == "model":
        inp = make_model_rows(3, 96, 72, 16, 6, dt, dev)
    else:
        inp = make_rows(2, 40, 40 if case == "rows" else 45, 13 if case == "odd_n" else 16, 1, dt, dev)
    check_grads("cuda", inp, dt, init=torch.randn(inp["u"].shape[0], 96 if case == "model" else 40,
                                                   inp["A"].shape[1], device=dev))


@pytest.mark.cuda
@pytest.mark.parametrize("z", [True, False])
@pytest.mark.parametrize("L", [1, 75, 160])  # one step; partial groups of 16 and of 8 steps; whole groups
def test_wide_forward_equals_rows_cuda(monkeypatch, z, L):
    # the channel-per-thread forward (w) repeats the row kernel's operations in order: y, the last state and the
    # checkpoints equal bit for bit (D 200: a partial block of 64 channels)
    inp = make_model_rows(2, 200, L, 16, 6, torch.bfloat16, torch.device("cuda"))
    if not z:
        inp["z"] = None
    args = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "dt_bias")]
    init = torch.randn(2, 200, 16, device="cuda")
    outs = {}
    for f in "1w":
        monkeypatch.setenv("SSM_SCAN_ROWS", f)
        outs[f] = scan_module._fwd_run(*args, init, None, None, True, True, True)
    for a, b, name in zip(outs["w"], outs["1"], ["y", "last_state", "chunk_states"]):
        if b is not None:  # chunk_states[:, :, 0] (the initial state) is never written
            a, b = (a[:, :, 1:], b[:, :, 1:]) if name == "chunk_states" else (a, b)
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("L", [1, 17, 50])  # one step; odd; chunks of 16 and a partial one
@pytest.mark.parametrize("N", [1, 16])
def test_channels_last_matches_reference(backend, dtype, L, N):
    inp = make(2, 40, L, N, dtype, device_of(backend), u_last=L != 17)
    check_grads(backend, inp, dtype)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("N", [17, 64, 256])  # past the thread kernels: the warp kernels
def test_channels_last_large_state(backend, N):
    inp = make(1, 5, 37, N, torch.float32, device_of(backend))
    check_grads(backend, inp, torch.float32)


@pytest.mark.parametrize("backend", backends())
def test_initial_state_across_chunks(backend):
    inp = make(2, 7, 45, 8, torch.float32, device_of(backend), u_last=False)
    check_grads(backend, inp, torch.float32, init=torch.randn(2, 7, 8, device=device_of(backend)))


@pytest.mark.cuda
@pytest.mark.parametrize("D", [1536, 4352])  # blocks of one warp; of four (B x D / 128 >= 2 per SM)
def test_model_widths_cuda(D):
    inp = make(8, D, 37, 16, torch.bfloat16, torch.device("cuda"))
    check_grads("cuda", inp, torch.bfloat16)


@pytest.mark.cuda
@pytest.mark.parametrize("L", [16, 17, 300])
@pytest.mark.parametrize("layout", ["channels_last", "rows"])
def test_forward_checkpoints_equal_the_backward_prepass_cuda(L, layout):
    # the fused Mamba-1 backward hands the recomputed forward's checkpoints to the scan backward
    dev = torch.device("cuda")
    inp = make(2, 70, L, 16, torch.bfloat16, dev) if layout == "channels_last" else \
        make_rows(2, 70, L, 16, 2, torch.bfloat16, dev, pad=-L % 8)
    args = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "dt_bias")]
    y, _, chunk_states = scan_module._fwd_run(*args, None, None, None, True, False, True)
    assert (chunk_states is None) == (L <= 16)
    dy = torch.randn_like(y)
    with_ck = scan_module._bwd_impl(*args, None, None, None, dy, dy.new_empty(0), True, False, chunk_states)
    plain = scan_module._bwd_impl(*args, None, None, None, dy, dy.new_empty(0), True, False)
    torch.testing.assert_close(y, scan_module._fwd_impl(*args, None, None, None, True, False)[0], rtol=0, atol=0)
    for name, a, b in zip(["du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddt_bias"], with_ck, plain):
        if name in ("dB", "dC"):  # float32 atomics in any order, then rounded to bf16: one ulp apart at most
            far = ((a.float() - b.float()).abs() > 1e-4 * (1 + b.float().abs())) & (bf16_ulps(a, b) > 1)
            assert not far.any(), f"{name}: {int(far.sum())} values over one bf16 ulp apart"
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)


def bf16_ulps(a, b):
    """Elementwise distance of two bfloat16 tensors in units in the last place (across zero too)."""
    def ordinal(t):  # sign-magnitude bits -> integers in the order of the values
        bits = t.contiguous().view(torch.int16).to(torch.int32)
        return torch.where(bits < 0, -(bits & 0x7FFF), bits)
    return (ordinal(a) - ordinal(b)).abs()


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bc", ["rows", "projected"])
@pytest.mark.parametrize("N", [8, 16])
def test_aligned_bc_tiles(backend, dtype, bc, N):
    # B/C whose 16-step tiles the CUDA forward reads in 16-byte packs: contiguous (B, 1, N, L) rows
    # (L a multiple of 8), or x_proj columns at 8-aligned offsets (rank 48, as mamba-130m); L = 40
    # ends in a partial group, read element by element
    dev = device_of(backend)
    inp = make(2, 40, 40, N, dtype, dev, u_last=False)
    if bc == "rows":
        inp["B"], inp["C"] = (torch.randn(2, 1, N, 40, device=dev).to(dtype) for _ in range(2))
    else:
        x_dbl = torch.randn(2, 40, 48 + 2 * N, device=dev).to(dtype)
        inp["B"], inp["C"] = (x_dbl[..., c:c + N].transpose(1, 2).unsqueeze(1) for c in (48, 48 + N))
    check_grads(backend, inp, dtype)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch, D, L, G, pad, z", [
    (2, 40, 40, 1, 0, True),     # two blocks of channels, the second partial; a partial group of 8 steps
    (1, 70, 77, 2, 3, True),     # y rows not 16-byte aligned: the forward elsewhere, the pre-pass here
    (1, 33, 56, 1, 8, False),    # padded rows, no z
])
def test_rows_layout_matches_reference(backend, dtype, batch, D, L, G, pad, z):
    # (B, D, L) rows and (B, G, N, L) B/C at N = 16: the CUDA forward's row kernel (and pre-pass)
    inp = make_rows(batch, D, L, 16, G, dtype, device_of(backend), pad=pad, z=z)
    check_grads(backend, inp, dtype, init=torch.randn(batch, D, 16, device=device_of(backend)))


