"""selective_state_step on every backend against the float64 reference (both layouts, grouped
B/C, tied per-head parameters, padding rows), step-by-step decoding equal to selective_scan,
torch.compile, bad input."""
import pytest
import torch

import ssm.ops as ops
from ssm.ops import _kernels
from ssm.ops.python import reference
from tests.ops.harness import DTYPES, assert_close, backends, device_of, rand, use_backend

LAYOUTS = [  # (layout, batch, heads or channels, head dim, N, G)
    ("mamba1", 1, 1, 1, 1, 1),
    ("mamba1", 3, 10, 1, 16, 1),
    ("mamba1", 2, 12, 1, 5, 3),
    ("mamba2", 2, 4, 8, 16, 2),
    ("mamba2", 3, 3, 5, 7, 1),
    ("mamba2", 1, 2, 3, 40, 1),  # N of 5 vectors: the two-sum loop and its odd vector
]
OPTIONS = ["plain", "softplus+bias", "z+D", "indices", "tied", "fp32_state", "fp32_dt", "noncontig", "all"]


def make_step(layout, batch, H, P, N, G, dtype, device, opts):
    full = "all" in opts or "all_contig" in opts
    nc = "noncontig" in opts or "all" in opts
    lead = (H,) if layout == "mamba1" else (H, P)
    rows = batch + 2 if {"indices"} & opts or full else batch
    sdtype = torch.float32 if {"fp32_state"} & opts or full else dtype
    state = rand(rows, *lead, N, dtype=sdtype, device=device)
    x = rand(batch, *lead, dtype=dtype, device=device, noncontig=nc)
    tied = layout == "mamba2" and ({"tied"} & opts or full)
    dt_dtype = torch.float32 if {"fp32_dt"} & opts else dtype
    dt = (torch.rand(batch, *lead[:1 if tied else 2], device=device) * 0.5 + 0.01).to(dt_dtype)
    A = -torch.exp(rand(*lead[:1 if tied else 2], *(() if tied else (N,)), device=device, scale=0.5))
    bc = (batch, N) if layout == "mamba1" and G == 1 and not full else (batch, G, N)
    B = rand(*bc, dtype=dtype, device=device, noncontig=nc)
    C = rand(*bc, dtype=dtype, device=device, noncontig=nc)
    p_shape = lead[:1] if tied else lead
    D = rand(*p_shape, device=device) if {"z+D"} & opts or full else None
    z = rand(batch, *lead, dtype=dtype, device=device, noncontig=nc) if {"z+D"} & opts or full else None
    dt_bias = rand(*p_shape, device=device, scale=0.3) - 1.0 if {"softplus+bias"} & opts or full else None
    idx = None
    if rows != batch:
        idx = torch.randperm(rows, device=device)[:batch].to(torch.int32)
        idx[0] = -1
    return dict(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, state_batch_indices=idx)


def step(fn, inp, softplus):
    return fn(inp["state"], inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"], inp["dt_bias"],
              softplus, state_batch_indices=inp["state_batch_indices"])


def as64(inp):
    return {k: (v.detach().double() if v is not None and v.is_floating_point() else v) for k, v in inp.items()}


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("option", OPTIONS)
def test_step_matches_reference(backend, dtype, layout, option):
    inp = make_step(*layout, dtype, device_of(backend), {option})
    softplus = option in ("softplus+bias", "all")
    ref = as64(inp)
    before = inp["state"].clone()
    with use_backend(backend):
        y = step(ops.selective_state_step, inp, softplus)
    y_ref = step(reference.selective_state_step, ref, softplus)
    assert y.dtype == dtype and y.shape == inp["x"].shape
    assert_close(y, y_ref, dtype, "y")
    assert_close(inp["state"], ref["state"], inp["state"].dtype, "state")
    idx = inp["state_batch_indices"]
    if idx is not None:
        untouched = torch.ones(before.shape[0], dtype=torch.bool)
        untouched[idx[idx >= 0].long()] = False
        assert torch.equal(inp["state"][untouched], before[untouched]), "rows not named by the indices changed"
        assert (y[idx < 0] == 0).all(), "padding rows must give zeros"


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("G", [0, 2])
def test_decoding_equals_scan(backend, dtype, G):
    batch, D, L, N = 2, 6, 11, 5
    dev = device_of(backend)
    u, z = rand(batch, D, L, dtype=dtype, device=dev), rand(batch, D, L, dtype=dtype, device=dev)
    delta = rand(batch, D, L, dtype=dtype, device=dev, scale=0.5)
    A, Dp, dt_bias = -torch.exp(rand(D, N, device=dev, scale=0.5)), rand(D, device=dev), rand(D, device=dev)
    shape = (batch, N, L) if G == 0 else (batch, G, N, L)
    B, C = rand(*shape, dtype=dtype, device=dev), rand(*shape, dtype=dtype, device=dev)
    init = rand(batch, D, N, device=dev)
    with use_backend(backend):
        y, last = ops.selective_scan(u, delta, A, B, C, Dp, z, dt_bias, True, True, initial_state=init)
        state = init.clone()
        ys = [ops.selective_state_step(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], Dp, z[..., t],
                                       dt_bias, True) for t in range(L)]
    assert_close(torch.stack(ys, -1), y.float(), dtype, "decoded y")
    assert_close(state, last, torch.float32, "decoded state")


def test_mamba_names():
    inp = make_step("mamba2", 2, 4, 3, 5, 2, torch.float32, "cpu", {"all"})
    ref = as64(inp)
    y = ops.selective_state_update(inp["state"], inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], inp["D"],
                                   inp["z"], inp["dt_bias"], dt_softplus=True,
                                   state_batch_indices=inp["state_batch_indices"])
    y_ref = ops.selective_state_update_ref(ref["state"], ref["x"], ref["dt"], ref["A"], ref["B"], ref["C"], ref["D"],
                                           ref["z"], ref["dt_bias"], dt_softplus=True,
                                           state_batch_indices=ref["state_batch_indices"])
    assert_close(y, y_ref, torch.float32, "y")
    assert_close(inp["state"], ref["state"], torch.float32, "state")


def test_compiled_matches_eager():
    def f(state, x, dt, A, B, C, D):
        return ops.selective_state_step(state, x, dt, A, B, C, D, None, None, True) + 1
    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for batch in (3, 6):
        inp = make_step("mamba1", batch, 8, 1, 4, 1, torch.float32, "cpu", {"z+D"})
        args = [inp[k] for k in ("state", "x", "dt", "A", "B", "C", "D")]
        state2 = inp["state"].clone()
        got = compiled(*args)
        want = f(state2, *args[1:])
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(inp["state"], state2)


GOOD = dict(state=(2, 4, 3), x=(2, 4), dt=(2, 4), A=(4, 3), B=(2, 3), C=(2, 3))


@pytest.mark.parametrize("bad, error, words", [
    (dict(state=torch.randn(2, 4)), ValueError, ["state", "(2, 4)"]),
    (dict(x=torch.randn(2, 5)), ValueError, ["state", "(*, 5, 3)"]),
    (dict(dt=torch.randn(2, 5)), ValueError, ["dt", "(2, 4)", "(2, 5)"]),
    (dict(A=torch.randn(4, 2)), ValueError, ["A", "(4, 3)"]),
    (dict(B=torch.randn(2, 3, 3)), ValueError, ["B", "group"]),
    (dict(C=torch.randn(3, 3)), ValueError, ["C", "(2, 3)"]),
    (dict(x=torch.randint(0, 3, (2, 4))), TypeError, ["x", "dtype", "int64"]),
    (dict(D=torch.randn(5)), ValueError, ["D", "(4)"]),
    (dict(z=torch.randn(2, 3)), ValueError, ["z", "(2, 4)"]),
    (dict(state=torch.randn(3, 4, 3)), ValueError, ["state", "state_batch_indices"]),
    (dict(state_batch_indices=torch.zeros(2)), TypeError, ["state_batch_indices", "dtype"]),
    (dict(state_batch_indices=torch.zeros(3, dtype=torch.int32)), ValueError, ["state_batch_indices", "(2)"]),
])
def test_bad_input_is_named(bad, error, words):
    args = {k: torch.randn(*s) for k, s in GOOD.items()}
    args.update(D=None, z=None, dt_bias=None, state_batch_indices=None)
    args.update(bad)
    with pytest.raises(error) as info:
        ops.selective_state_step(args["state"], args["x"], args["dt"], args["A"], args["B"], args["C"], args["D"],
                                 args["z"], args["dt_bias"], state_batch_indices=args["state_batch_indices"])
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


RACE_LAYOUTS = [("mamba2", 1, 80, 64, 128, 1), ("mamba1", 64, 5120, 1, 16, 1), ("mamba2", 1, 24, 64, 64, 1),
                ("mamba2", 2, 8, 32, 256, 2), ("mamba1", 3, 200, 1, 16, 1)]


# lean: the defaults (lean_kernel and mamba1_pair_kernel with PDL, the state prefetched into L2 before the wait).
# Session 8 round 1 (H200): session 7's racy opt-in (state loads before the wait) failed this test after a step on the
# same state in a graph, at the bench's Mamba-2 b1 shape and at Mamba-1 3 x 200.
@pytest.mark.cuda
@pytest.mark.parametrize("form, layout", [("lean", lay) for lay in RACE_LAYOUTS])
@pytest.mark.parametrize("writer", ["copy", "step"])
@pytest.mark.parametrize("graph", [False, True])
def test_cuda_step_reads_the_state_the_kernel_before_it_wrote(form, layout, writer, graph, monkeypatch):
    """A kernel that writes the state launched right before each step, 12 times (eagerly, or captured in one CUDA
    graph): the state overwritten by a copy, or by a step on the same state (a PDL kernel that lets the next one start
    early). Every step must see the written state (a step that reads it before its wait on the previous kernel does
    not). Bench shapes (Mamba-2 b1 H80 P64 N128, Mamba-1 b64 D5120) and others; no NaN poisoning (its fill kernel
    would sit between the writer and the step)."""
    use_form(monkeypatch, form)
    monkeypatch.setattr(_kernels, "POISON_OUTPUTS", False)
    dev, reps = torch.device("cuda"), 12
    opts = {"z+D", "softplus+bias"} | ({"tied"} if layout[0] == "mamba2" else set())
    steps = [make_step(*layout, torch.bfloat16, dev, opts) for _ in range(reps)]
    writers = [make_step(*layout, torch.bfloat16, dev, opts) for _ in range(reps)]
    state = steps[0]["state"]
    start = state.clone()

    def run():
        ys = []
        for inp, w in zip(steps, writers):
            if writer == "copy":
                state.copy_(w["state"])
            else:
                ys.append(step(ops.selective_state_step, {**w, "state": state}, True))
            ys.append(step(ops.selective_state_step, {**inp, "state": state}, True))
        return ys
    with use_backend("cuda"):
        ys = run()  # eager (in the graph case: the warm-up)
        if graph:
            state.copy_(start)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                ys = run()
            state.copy_(start)
            g.replay()
    torch.cuda.synchronize()
    ref = start.double()
    ys_ref = []
    for inp, w in zip(steps, writers):
        if writer == "copy":
            ref.copy_(w["state"])
        else:
            ys_ref.append(step(reference.selective_state_step, {**as64(w), "state": ref}, True))
        ys_ref.append(step(reference.selective_state_step, {**as64(inp), "state": ref}, True))
    for i, (y, y_ref) in enumerate(zip(ys, ys_ref)):
        assert_close(y, y_ref, torch.bfloat16, f"y of step {i}")
    assert_close(state, ref, torch.bfloat16, "state")



@pytest.mark.cuda
@pytest.mark.parametrize("wide", ["0", "1"])
@pytest.mark.parametrize("layout", LAYOUTS + [("mamba1", 4, 64, 1, 16, 1), ("mamba2", 2, 3, 16, 128, 1),
                                              ("mamba2", 1, 2, 4, 256, 2)])
@pytest.mark.parametrize("option", ["plain", "all"])
def test_cuda_row_shapes_match_reference(wide, layout, option, monkeypatch):
    """Both row shapes of the CUDA kernel (narrow: few lanes a row, several packs each; wide: one
    pack a lane), whichever the grid size would pick."""
    monkeypatch.setenv("SSM_STEP_WIDE", wide)
    inp = make_step(*layout, torch.bfloat16, torch.device("cuda"), {option})
    ref = as64(inp)
    with use_backend("cuda"):
        y = step(ops.selective_state_step, inp, option == "all")
    assert_close(y, step(reference.selective_state_step, ref, option == "all"), torch.bfloat16, "y")
    assert_close(inp["state"], ref["state"], inp["state"].dtype, "state")


# kernel forms: the general kernel (SSM_STEP_LEAN=0), the lean kernels (Mamba-1: mamba1_pair_kernel)
FORMS = {"general": {"SSM_STEP_LEAN": "0"}, "lean": {}}


# variants beside the defaults: session 5's Mamba-1 kernel without dt_proj (the fallback, four or two batch rows a
# thread); lean_kernel and mamba1_pair_kernel launched without PDL (SSM_PDL=0: their wait is then a no-op)
VARIANT_FORMS = {"m1_old": {"SSM_STEP_M1_FORM": "old"}, "m1_old_r2": {"SSM_STEP_M1_FORM": "old", "SSM_STEP_M1": "2"},
                 "nopdl": {"SSM_PDL": "0"}}
FORMS.update(VARIANT_FORMS)
M1_LAYOUTS = [("mamba1", 9, 40, 1, 16, 1), ("mamba1", 6, 24, 1, 16, 3), ("mamba1", 1, 200, 1, 16, 1),
              ("mamba1", 13, 300, 1, 16, 1)]


def use_form(monkeypatch, form):
    for name in ("SSM_STEP_LEAN", "SSM_STEP_M1", "SSM_STEP_M1_FORM", "SSM_PDL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in FORMS[form].items():
        monkeypatch.setenv(name, value)


@pytest.mark.cuda
@pytest.mark.parametrize("form", [f for f in FORMS if f not in VARIANT_FORMS])
@pytest.mark.parametrize("layout", M1_LAYOUTS + [("mamba2", 1, 4, 8, 64, 2), ("mamba2", 2, 3, 16, 128, 1),
                                                 ("mamba2", 1, 6, 4, 256, 3)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("option", ["plain", "softplus+bias", "z+D", "indices", "fp32_state", "all_contig"])
def test_cuda_lean_kernel_matches_reference(form, layout, dtype, option, monkeypatch):
    """The lean kernels (contiguous rows: Mamba-1 N = 16, several batch rows per thread; Mamba-2
    wide rows with A tied) in each form and the general kernel they replace, same inputs."""
    check_lean(form, layout, dtype, option, monkeypatch)


@pytest.mark.cuda
@pytest.mark.parametrize("form, layout", [(f, m1) for f in ("m1_old", "m1_old_r2", "nopdl")
                                           for m1 in M1_LAYOUTS + [("mamba1", 70, 130, 1, 16, 1)]]
                         + [("nopdl", ("mamba2", 2, 3, 16, 128, 1)), ("nopdl", ("mamba2", 1, 5, 20, 128, 1))])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("option", ["plain", "softplus+bias", "z+D", "indices", "all_contig"])
def test_cuda_step_variants_match_reference(form, layout, dtype, option, monkeypatch):
    check_lean(form, layout, dtype, option, monkeypatch)


@pytest.mark.cuda
@pytest.mark.parametrize("form, rows", [("lean", "4"), ("m1_old", "2"), ("m1_old", "4")])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_mamba1_softplus_over_its_range(form, rows, dtype, monkeypatch):
    """dt + dt_bias from -14 to 24 over the channels: mamba1_pair_kernel's (lean) softplus by its series
    (e^v < 2^-5), by lg2 (up to 20) and the identity above 20, against the reference; session 5's kernel's exact one."""
    use_form(monkeypatch, form)
    monkeypatch.setenv("SSM_STEP_M1", rows)
    inp = make_step("mamba1", 9, 300, 1, 16, 1, dtype, torch.device("cuda"), {"z+D"})
    inp["dt_bias"] = torch.linspace(-14.0, 24.0, 300, device="cuda")
    ref = as64(inp)
    with use_backend("cuda"):
        y = step(ops.selective_state_step, inp, True)
    assert_close(y, step(reference.selective_state_step, ref, True), dtype, "y")
    assert_close(inp["state"], ref["state"], dtype, "state")


def check_cuda_step(inp, option, dtype):
    """One CUDA step against the float64 reference: y, the state, rows a padding index leaves untouched."""
    softplus = option in ("softplus+bias", "all_contig")
    ref = as64(inp)
    before = inp["state"].clone()
    with use_backend("cuda"):
        y = step(ops.selective_state_step, inp, softplus)
    assert_close(y, step(reference.selective_state_step, ref, softplus), dtype, "y")
    assert_close(inp["state"], ref["state"], inp["state"].dtype, "state")
    idx = inp["state_batch_indices"]
    if idx is not None:
        untouched = torch.ones(before.shape[0], dtype=torch.bool)
        untouched[idx[idx >= 0].long().cpu()] = False
        assert torch.equal(inp["state"][untouched.to(before.device)], before[untouched.to(before.device)])
        assert (y[idx < 0] == 0).all(), "padding rows must give zeros"


def check_lean(form, layout, dtype, option, monkeypatch):
    use_form(monkeypatch, form)
    monkeypatch.setenv("SSM_STEP_WIDE", "1")
    opts = {option} | ({"tied"} if layout[0] == "mamba2" else set())
    inp = make_step(*layout, dtype, torch.device("cuda"), opts)
    check_cuda_step(inp, option, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("form, layout", [(f, lay) for f in ("lean", "general") for lay in
                                          (("mamba1", 8, 300, 1, 16, 1), ("mamba2", 1, 6, 16, 128, 1))])
def test_cuda_steps_in_a_graph_follow_each_other(form, layout, monkeypatch):
    """Three steps on one state captured in a CUDA graph: each reads the state the previous one wrote."""
    use_form(monkeypatch, form)
    monkeypatch.setenv("SSM_STEP_WIDE", "1")
    dev = torch.device("cuda")
    steps = [make_step(*layout, torch.bfloat16, dev, {"z+D", "softplus+bias"} | ({"tied"} if layout[0] == "mamba2" else set()))
             for _ in range(3)]
    state = steps[0]["state"]
    ref_state = state.detach().double()
    start = state.clone()
    with use_backend("cuda"):
        graph_steps = lambda: [step(ops.selective_state_step, {**inp, "state": state}, True) for inp in steps]  # noqa: E731
        graph_steps()  # warm-up (compiles nothing; checks the call)
        state.copy_(start)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            ys = graph_steps()
        graph.replay()
    torch.cuda.synchronize()
    for i, inp in enumerate(steps):
        y_ref = step(reference.selective_state_step, {**as64(inp), "state": ref_state}, True)
        assert_close(ys[i], y_ref, torch.bfloat16, f"y of step {i}")
    assert_close(state, ref_state, torch.bfloat16, "state")


@pytest.mark.cuda
@pytest.mark.parametrize("form, layout", [("lean", ("mamba2", 1, 6, 16, 128, 1)), ("lean", ("mamba1", 8, 300, 1, 16, 1))])
def test_cuda_pdl_steps_read_their_inputs_after_the_wait(form, layout, monkeypatch):
    """lean_kernel and mamba1_pair_kernel with programmatic dependent launch (the default) in a CUDA graph: six
    steps over two states in turn (the state read before the wait was written two steps earlier), each step's x
    written by the kernel launched right before it (read after the wait), against the reference."""
    use_form(monkeypatch, form)
    monkeypatch.setenv("SSM_STEP_WIDE", "1")
    dev = torch.device("cuda")
    opts = {"z+D", "softplus+bias"} | ({"tied"} if layout[0] == "mamba2" else set())
    steps = [make_step(*layout, torch.bfloat16, dev, opts) for _ in range(6)]
    states = [steps[0]["state"], steps[1]["state"]]
    ref_states = [s.detach().double() for s in states]
    starts = [s.clone() for s in states]
    x = torch.empty_like(steps[0]["x"])
    with use_backend("cuda"):
        def graph_steps():
            ys = []
            for i, inp in enumerate(steps):
                x.copy_(inp["x"])
                ys.append(step(ops.selective_state_step, {**inp, "state": states[i % 2], "x": x}, True))
            return ys
        graph_steps()  # warm-up
        for s, s0 in zip(states, starts):
            s.copy_(s0)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            ys = graph_steps()
        graph.replay()
    torch.cuda.synchronize()
    for i, inp in enumerate(steps):
        y_ref = step(reference.selective_state_step, {**as64(inp), "state": ref_states[i % 2]}, True)
        assert_close(ys[i], y_ref, torch.bfloat16, f"y of step {i}")
    for s, r in zip(states, ref_states):
        assert_close(s, r, torch.bfloat16, "state")


@pytest.mark.cuda
@pytest.mark.parametrize("form", ["lean", "general"])
@pytest.mark.parametrize("layout", [("mamba2", 3, 4, 8, 64, 2), ("mamba2", 2, 3, 16, 128, 1), ("mamba2", 2, 6, 4, 256, 3),
                                    ("mamba2", 5, 2, 64, 128, 1), ("mamba2", 3, 2, 5, 64, 1)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("option", ["plain", "softplus+bias", "z+D", "indices", "fp32_state", "all_contig"])
def test_cuda_large_batch_tiles_match_reference(form, layout, dtype, option, monkeypatch):
    """Mamba-2 rows of large batches (narrow grids, SSM_STEP_WIDE=0): the head tiles streamed through shared
    memory (mamba2_step_kernel) and the general kernel, same inputs."""
    use_form(monkeypatch, form)
    monkeypatch.setenv("SSM_STEP_WIDE", "0")
    inp = make_step(*layout, dtype, torch.device("cuda"), {option, "tied"})
    check_cuda_step(inp, option, dtype)

