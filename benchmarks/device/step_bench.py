"""Device-round driver of the state-step work (sessions 5-6, engineer step), one Python process: the GPU
tests of the state steps and the conv update first (pytest inside this process; NaN poisoning switched off
after them), then the floors of the graph measurement (one-element fill, 1.3 MB copy), the state steps in a
CUDA graph over rotating buffers (bench_cuda's method) in every kernel form, then end-to-end decode at batch 64
with cg=True and the kernel list of one eager batch-64 decode step (torch.profiler). Items past --deadline
seconds (from the process start) are skipped.

    python3 benchmarks/device/step_bench.py OUT_DIR [--models mamba-130m,...] [--forms lean,pdl,...]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
import bench_cuda as bc  # noqa: E402
import bench_models_cuda as bm  # noqa: E402

from ssm.ops import _kernels  # noqa: E402
from ssm.ops import proj_state_step as pss  # noqa: E402
from ssm.utils.inference import InferenceParams  # noqa: E402

# form -> environment (tests/ops/test_state_step.py FORMS); "nofold": proj_state_step leaves dt_proj to cuBLAS
# past batch 8 (ssm.ops.proj_state_step.LARGE = False); "fold": folds it at every rank (LARGE_MAX_RANK = 256)
FORMS = {"general": {"SSM_STEP_LEAN": "0"}, "lean": {}, "m1_r2": {"SSM_STEP_M1": "2"}, "m1_r4": {"SSM_STEP_M1": "4"},
         "wide": {"SSM_STEP_WIDE": "1"}, "nofold": {"nofold": "1"}, "m1old": {"SSM_STEP_M1_FORM": "old"},
         "fold": {"fold": "1"}, "nopdl": {"SSM_PDL": "0"}}
ENV = ("SSM_STEP_LEAN", "SSM_STEP_M1", "SSM_STEP_WIDE", "SSM_STEP_M1_FORM", "SSM_PDL")
START = time.time()
DEADLINE = [1e9]


def late(what):
    if time.time() - START > DEADLINE[0]:
        print(f"  skipped (deadline): {what}", flush=True)
        return True
    return False
STEP_CASES = {"m1": ("state step Mamba-1 b64", 64, 5120, 1, 16, True, 0.010),
              "m2b1": ("state step Mamba-2 b1", 1, 80, 64, 128, False, 0.003),
              "m2b64": ("state step Mamba-2 b64", 64, 80, 64, 128, False, 0.070)}


class Outcomes:
    """pytest plugin: counts of passed / failed / skipped tests and the failed ids."""

    def __init__(self):
        self.passed, self.skipped, self.failed = 0, 0, []

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed.append(report.nodeid)
        elif report.when == "call" and report.passed:
            self.passed += 1
        elif report.skipped:
            self.skipped += 1


def run_tests(out_dir, files, select):
    import pytest
    res = Outcomes()
    t = time.time()
    with open(os.path.join(out_dir, "pytest_step.log"), "w") as f, contextlib.redirect_stdout(f):
        rc = pytest.main(["-q", "-p", "no:cacheprovider", "-rf", "-k", select, *files], plugins=[res])
    print(f"tests rc={rc}: {res.passed} passed, {len(res.failed)} failed, {res.skipped} skipped "
          f"({time.time() - t:.1f} s) {' '.join(res.failed[:6])}", flush=True)

def with_env(env):
    @contextlib.contextmanager
    def ctx():
        old = {k: os.environ.get(k) for k in ENV}
        for k in old:
            os.environ.pop(k, None)
        os.environ.update({k: v for k, v in env.items() if k in ENV})
        pss.LARGE = "nofold" not in env
        pss.LARGE_MAX_RANK = 256 if "fold" in env else 64  # "fold": dt_proj folded at every rank
        try:
            yield
        finally:
            pss.LARGE, pss.LARGE_MAX_RANK = True, 64
            for k, v in old.items():
                os.environ.pop(k, None)
                if v is not None:
                    os.environ[k] = v
    return ctx()


def run_steps(copy_gbs, plan):
    # plan: [(case, form)], in order; "m1proj": the dt_proj-folded Mamba-1 step (proj_state_step_case)
    for case, form in plan:
        if late(f"{case}:{form}"):
            continue
        with with_env(FORMS[form]):
            if case == "m1proj":
                proj_state_step_case(f"proj state step Mamba-1 b64 D1536 rank 48 {form}", copy_gbs)
                continue
            name, *shape, target = STEP_CASES[case]
            bc.step_case(f"{name} {form}", *shape, copy_gbs, target, with_ref=False)


def proj_state_step_case(name, copy_gbs, batch=64, D=1536, rank=48, N=16):
    """Mamba-1's b64 decode step with dt_proj folded (mamba-130m's shape: the kernel Mamba1.step runs there) in a CUDA
    graph over rotating states, like bench_cuda.step_case."""
    dev, bf16 = torch.device("cuda"), torch.bfloat16
    states = [torch.randn(batch, D, N, device=dev, dtype=bf16) for _ in range(64)]
    x, z = (torch.randn(batch, D, device=dev, dtype=bf16) for _ in range(2))
    x_dbl = torch.randn(batch, rank + 2 * N, device=dev, dtype=bf16)  # rows of rank + 2N, as Mamba1.step's x_proj output
    dt_in, Bm, Cm = x_dbl[:, :rank], x_dbl[:, rank:rank + N], x_dbl[:, rank + N:]
    w = torch.randn(D, rank, device=dev, dtype=bf16) * rank ** -0.5
    A, Dp, bias = -torch.rand(D, N, device=dev), torch.randn(D, device=dev), torch.randn(D, device=dev)
    fns = [lambda s=s: pss.proj_state_step(s, x, dt_in, w, A, Bm, Cm, Dp, z, bias, True) for s in states]
    io = 2 * bc.nbytes(states[0]) + 2 * bc.nbytes(x) + bc.nbytes(z)
    bc.record(name, f"batch {batch} D{D} N{N} rank {rank} bf16 state", bc.graph_time_ms(fns), io, copy_gbs,
              note="CUDA graph, rotating buffers")


def run_floors(copy_gbs):
    """The graph method's own floor for the Mamba-2 b1 step: a one-element fill kernel a call, and a copy of the
    step's 1.31 MB state (2.6 MB read + written) over 64 rotating buffer pairs (> L2)."""
    dev, n = torch.device("cuda"), 80 * 64 * 128
    ones = [torch.empty(1, device=dev) for _ in range(64)]
    bc.record("graph floor: 1-element fill", "1 float", bc.graph_time_ms([lambda t=t: t.fill_(1.0) for t in ones]), 4,
              copy_gbs, note="CUDA graph")
    src = [torch.randn(n, device=dev).to(torch.bfloat16) for _ in range(64)]
    dst = [torch.empty_like(t) for t in src]
    ms = bc.graph_time_ms([lambda a=a, b=b: b.copy_(a) for a, b in zip(src, dst)])
    bc.record("graph floor: 1.31 MB copy", "80x64x128 bf16", ms, 2 * bc.nbytes(src[0]), copy_gbs, note="CUDA graph")


# (model, layer, K, N) of Mamba-1's b64 decode GEMMs
GEMMS = [("130m", "in_proj", 768, 3072), ("130m", "x_proj", 1536, 80), ("130m", "out_proj", 1536, 768),
         ("1.4b", "in_proj", 2048, 8192), ("1.4b", "x_proj", 4096, 160), ("1.4b", "dt_proj", 128, 4096),
         ("1.4b", "out_proj", 4096, 2048)]


def run_gemms(copy_gbs, batch=64):
    """Each b64 decode GEMM (bf16, weights rotated past L2 like a model's layers) in a CUDA graph, three ways:
    F.linear(x, W) as the module runs it, W @ x^T (cuBLAS sees the transposed problem; output transposed), and
    F.linear on x padded to 128 rows (another tile choice)."""
    dev = torch.device("cuda")
    for model, name, K, N in GEMMS:
        if late(f"gemm {model} {name}"):
            return
        ws = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) for _ in range(max(2, min(32, (200 << 20) // (2 * N * K))))]
        x = torch.randn(batch, K, device=dev, dtype=torch.bfloat16)
        x128 = torch.randn(128, K, device=dev, dtype=torch.bfloat16)
        forms = {"linear": [lambda w=w: torch.nn.functional.linear(x, w) for w in ws],
                 "w@xT": [lambda w=w: torch.mm(w, x.t()) for w in ws],
                 "pad128": [lambda w=w: torch.nn.functional.linear(x128, w) for w in ws]}
        for form, fns in forms.items():
            bc.record(f"gemm {model} {name} {form}", f"{batch}x{K} @ {K}x{N}", bc.graph_time_ms(fns), 2 * N * K,
                      copy_gbs, note="CUDA graph, weights rotated")


def decode_profile(model, batch=64):
    """Kernel list (device us per step) of one eager decode step at this batch, after a short prefill."""
    params = InferenceParams(max_seqlen=64, max_batch_size=batch)
    ids = torch.randint(0, bm.VOCAB, (batch, bm.PROMPT), device=bm.DEV)
    with torch.inference_mode():
        model(ids, inference_params=params, num_last_tokens=1)
        params.seqlen_offset += bm.PROMPT
        tok = ids[:, -1:]
        for _ in range(2):  # warm-up steps
            model(tok, position_ids=torch.full_like(tok, params.seqlen_offset), inference_params=params, num_last_tokens=1)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            model(tok, position_ids=torch.full_like(tok, params.seqlen_offset), inference_params=params, num_last_tokens=1)
            torch.cuda.synchronize()
    rows = [(e.key, e.count, e.self_device_time_total) for e in prof.key_averages() if e.self_device_time_total > 0]
    return sorted(rows, key=lambda r: -r[2])


def run_models(names, out_dir, results):
    # name or name@form (the form's environment while the model decodes: the graph captures its kernels)
    for spec in names:
        if late(spec):
            continue
        name, _, form = spec.partition("@")
        with with_env(FORMS[form] if form else {}):
            run_model(spec, name, out_dir, results)


def run_model(spec, name, out_dir, results):
    t = time.time()
    model = bm.make_model(name)
    ms = bm.decode_ms_per_token(model, 64)
    target = bm.MODELS[name][3][3]
    kernels = decode_profile(model)
    total = sum(r[2] for r in kernels)
    print(f"  {spec:12s} decode b64 per step {ms:7.3f} ms (target {target}); eager step kernels {total / 1e3:.3f} ms"
          f" ({time.time() - t:.1f} s)", flush=True)
    for key, count, us in kernels[:12]:
        print(f"    {us:8.1f} us x{count:<4d} {key[:90]}", flush=True)
    results.append(dict(model=spec, decode_b64_ms=ms, target_ms=target, kernels=kernels))
    with open(os.path.join(out_dir, f"kernels_{spec}.txt"), "w") as f:
        f.writelines(f"{us:10.1f} us x{count:<4d} {key}\n" for key, count, us in kernels)
    del model
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tests", default="tests/ops/test_state_step.py,tests/ops/test_proj_state_step.py")
    ap.add_argument("-k", dest="select", default="cuda", help="pytest -k expression")
    ap.add_argument("--steps", default="")
    ap.add_argument("--models", default="mamba-130m,mamba2-130m,mamba-1.4b")
    ap.add_argument("--steps2", default="", help="state steps timed after the models")
    ap.add_argument("--models2", default="", help="models (name@form) decoded last")
    ap.add_argument("--floors", action="store_true", help="time the graph method's floors first")
    ap.add_argument("--gemms", action="store_true", help="time the b64 decode GEMMs three ways, after the models")
    ap.add_argument("--wait", default="", help="after the tests, wait until these files (comma-separated) exist")
    ap.add_argument("--wait-max", type=float, default=15, help="seconds to wait for them at most")
    ap.add_argument("--tests-only", action="store_true", help="run the tests and stop (timing in another process)")
    ap.add_argument("--deadline", type=float, default=1e9, help="skip items started past this many seconds")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    DEADLINE[0] = args.deadline
    if args.tests:
        run_tests(args.out, args.tests.split(","), args.select)
        if args.tests_only:
            return
        _kernels.POISON_OUTPUTS = False  # the tests' conftest NaN-poisons every kernel output (a fill kernel each)
    torch.zeros(1, device="cuda")  # the CUDA context while waiting
    t = time.time()
    waits = [w for w in args.wait.split(",") if w]
    while not all(os.path.exists(w) for w in waits) and time.time() - t < args.wait_max:
        time.sleep(0.2)  # nothing timed while another process (tests, ncu) uses the GPU
    if waits:
        print(f"waited {time.time() - t:.1f} s for {', '.join(w for w in waits if os.path.exists(w))}; poisoning "
              f"{_kernels.POISON_OUTPUTS}", flush=True)
    copy_gbs = bc.copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}: copy {copy_gbs:.0f} GB/s", flush=True)
    if args.floors:
        run_floors(copy_gbs)
    models: list = []

    def dump():  # after each part: a run cut by its time limit keeps what it measured
        with open(os.path.join(args.out, "step_bench.json"), "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), copy_gbs=copy_gbs, steps=bc.RESULTS, models=models), f,
                      indent=1)
    run_steps(copy_gbs, [tuple(x.split(":")) for x in args.steps.split(",") if x])
    dump()
    run_models([m for m in args.models.split(",") if m], args.out, models)
    dump()
    if args.gemms:
        run_gemms(copy_gbs)
    run_steps(copy_gbs, [tuple(x.split(":")) for x in args.steps2.split(",") if x])
    run_models([m for m in args.models2.split(",") if m], args.out, models)
    dump()


if __name__ == "__main__":
    main()
