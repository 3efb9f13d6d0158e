"""Device-round driver of the state-step work (session 5, engineer step), one Python process: the GPU
tests of the state steps first (pytest inside this process), then the state steps in a CUDA graph over
rotating buffers (bench_cuda's method) in every kernel form, then end-to-end decode at batch 64 with
cg=True and the kernel list of one eager batch-64 decode step (torch.profiler).

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
# past batch 8 (ssm.ops.proj_state_step.LARGE = False)
FORMS = {"general": {"SSM_STEP_LEAN": "0"}, "lean": {}, "m1_r2": {"SSM_STEP_M1": "2"}, "m1_r4": {"SSM_STEP_M1": "4"},
         "wide": {"SSM_STEP_WIDE": "1"}, "nofold": {"nofold": "1"}}
ENV = ("SSM_STEP_LEAN", "SSM_STEP_M1", "SSM_STEP_WIDE")
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


def run_tests(out_dir, files):
    import pytest
    res = Outcomes()
    t = time.time()
    with open(os.path.join(out_dir, "pytest_step.log"), "w") as f, contextlib.redirect_stdout(f):
        rc = pytest.main(["-q", "-p", "no:cacheprovider", "-rf", "-k", "cuda", *files], plugins=[res])
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
        try:
            yield
        finally:
            pss.LARGE = True
            for k, v in old.items():
                os.environ.pop(k, None)
                if v is not None:
                    os.environ[k] = v
    return ctx()


def run_steps(copy_gbs, plan):
    # plan: [(case, form)], in order
    for case, form in plan:
        name, *shape, target = STEP_CASES[case]
        with with_env(FORMS[form]):
            bc.step_case(f"{name} {form}", *shape, copy_gbs, target, with_ref=False)


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
    ap.add_argument("--steps", default="")
    ap.add_argument("--models", default="mamba-130m,mamba2-130m,mamba-1.4b")
    ap.add_argument("--steps2", default="", help="state steps timed after the models")
    ap.add_argument("--models2", default="", help="models (name@form) decoded last")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.tests:
        run_tests(args.out, args.tests.split(","))
        _kernels.POISON_OUTPUTS = False  # the tests' conftest NaN-poisons every kernel output (a fill kernel each)
    copy_gbs = bc.copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}: copy {copy_gbs:.0f} GB/s", flush=True)
    run_steps(copy_gbs, [tuple(x.split(":")) for x in args.steps.split(",") if x])
    models: list = []
    run_models([m for m in args.models.split(",") if m], args.out, models)
    run_steps(copy_gbs, [tuple(x.split(":")) for x in args.steps2.split(",") if x])
    run_models([m for m in args.models2.split(",") if m], args.out, models)
    with open(os.path.join(args.out, "step_bench.json"), "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), copy_gbs=copy_gbs, steps=bc.RESULTS, models=models), f,
                  indent=1)


if __name__ == "__main__":
    main()
