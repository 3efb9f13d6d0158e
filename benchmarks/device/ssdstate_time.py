"""Device round of the SSD state kernels (ssdstate, session 9), timing part: one Python process, after the tests (run
by ssdstate.sh in another process: their conftest poisons kernel outputs with NaN). First a seed study of a float32
gradient test near its bound (dA of test_gradients_over_several_checkpoint_segments, round 1).

    python benchmarks/device/ssdstate_time.py OUT_DIR

At issue 6's shapes (bf16; D, dt_bias, softplus; chunk 256): the forward's and the fwd+bwd call's kernel sums
(profiler) and eager times per form (session 9's state kernels, and session 8's by their switches), with the
per-kernel times of the kernels this engineer owns (session 8's bwd_state / finalize: SSM_SSD_BWD_THROUGH=0).
"""
from __future__ import annotations

import json
import os
import sys

import torch

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

SWITCHES = ("SSM_SSD_BWD_THROUGH",)
FORMS = {"new": {}, "t0": {"SSM_SSD_BWD_THROUGH": "0"}}
MINE = ("chunk_state", "chunk_tokens", "state_passing", "dstate", "bwd_state", "finalize", "copy", "elementwise")


def kernel_table(fn, iters=3):
    """Per-call device time of each kernel fn launches (profiler), in us, largest first."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = {e.key: e.self_device_time_total / iters for e in prof.key_averages()
            if e.self_device_time_total > 0 and e.device_type == torch.autograd.DeviceType.CUDA}
    return dict(sorted(rows.items(), key=lambda kv: -kv[1]))


def short(name):
    return name.replace("void ssm::cuda::ssd::", "").split("(ssm::")[0][:70]


def case(B, L, form, part):
    from bench_cuda import time_ms
    from bench_ssd_cuda import fwd_bwd_fn, fwd_fn, inputs
    import ssm.ops._kernels as kernels
    for k in SWITCHES:
        os.environ.pop(k, None)
    os.environ.update(FORMS[form])
    t = inputs(B, L)
    fn = fwd_fn(t) if part == "fwd" else fwd_bwd_fn(t)
    table = kernel_table(fn)
    mine = {short(k): round(v, 1) for k, v in table.items() if any(m in k for m in MINE)}
    row = dict(case=f"B{B} L{L}", part=part, form=form, poison=kernels.POISON_OUTPUTS,
               kernels_ms=round(sum(table.values()) / 1e3, 4), eager_ms=round(time_ms(fn, reps=10), 4), mine_us=mine)
    print(json.dumps({k: v for k, v in row.items() if k != "mine_us"}), flush=True)
    for k, v in mine.items():
        print(f"   {v:8.1f} us  {k}", flush=True)
    return row


def seed_study(seeds):
    """test_ssd.py::test_gradients_over_several_checkpoint_segments[False-cuda] (float32, B2 L1100 H2 P3 N8, chunk
    64, seq_idx) per seed: dA's relative error with the through term in bwd_state (new) and in finalize (t0), and the
    float32 reference's own; the test's bound is 2e-5."""
    from ssm.ops.python import reference
    from tests.ops.harness import rel_err
    from tests.ops.test_ssd import GRAD_NAMES, make_inputs, run
    rows = []
    for seed in seeds:
        row = dict(seed=seed)
        for form in ("new", "t0", "ref32"):
            for k in SWITCHES:
                os.environ.pop(k, None)
            os.environ.update(FORMS.get(form, {}))
            torch.manual_seed(seed)
            args = make_inputs(2, 1100, 2, 3, 1, 8, torch.float32, "cuda", D="full", z=True, bias=True, init=True,
                               seq=True)
            call = dict(return_final_states=True, dt_limit=(0.05, 0.8))
            leaves = {k: (v.detach().clone().requires_grad_() if k in GRAD_NAMES and v is not None else v)
                      for k, v in args.items()}
            names = ("X", "dt", "A", "B", "C")
            if form == "ref32":
                out = reference.ssd_chunk_scan(*(leaves[k] for k in names), 64, D=leaves["D"], z=leaves["z"],
                                               dt_bias=leaves["dt_bias"], initial_states=leaves["initial_states"],
                                               seq_idx=leaves["seq_idx"], dt_softplus=True, **call)
            else:
                out = run("cuda", leaves, 64, dt_softplus=True, **call)
            douts = [torch.randn_like(o) for o in out]
            torch.autograd.backward(list(out), douts)
            ref_leaves = {k: (v.detach().double().requires_grad_() if k in GRAD_NAMES and v is not None else v)
                          for k, v in args.items()}
            ref = reference.ssd_chunk_scan(*(ref_leaves[k] for k in names), 64, D=ref_leaves["D"],
                                           z=ref_leaves["z"], dt_bias=ref_leaves["dt_bias"],
                                           initial_states=ref_leaves["initial_states"],
                                           seq_idx=ref_leaves["seq_idx"], dt_softplus=True, **call)
            torch.autograd.backward(list(ref), [d.double() for d in douts])
            row[form] = {n: float(f"{rel_err(leaves[n].grad, ref_leaves[n].grad):.3g}") for n in ("A", "dt", "D")
                         if leaves[n] is not None}
        rows.append(row)
        print(f"-- seed {seed}: dA new {row['new']['A']:.3g} t0 {row['t0']['A']:.3g} ref32 {row['ref32']['A']:.3g}"
              f" (ddt {row['new']['dt']:.3g} / {row['t0']['dt']:.3g} / {row['ref32']['dt']:.3g})", flush=True)
    return rows


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    res = dict(device=torch.cuda.get_device_name(), rows=[])
    print(res["device"], flush=True)
    import random
    res["seeds"] = seed_study([1926839419] + [random.randrange(2**31) for _ in range(12)])
    with open(os.path.join(out_dir, "time.json"), "w") as f:
        json.dump(res, f, indent=1)
    parts = [(8, 2048, "new", "fwdbwd"), (1, 8192, "new", "fwdbwd"), (8, 2048, "new", "fwd"), (1, 8192, "new", "fwd"),
             (8, 2048, "t0", "fwdbwd")]
    for B, L, form, part in parts:
        try:
            res["rows"].append(case(B, L, form, part))
        except Exception as e:  # a part's failure leaves the others
            print(f"-- B{B} L{L} {form} {part} failed: {type(e).__name__}: {e}", flush=True)
        with open(os.path.join(out_dir, "time.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
