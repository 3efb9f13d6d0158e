"""Error distribution of the CUDA SSD forward's y against the float64 reference over many seeds, beside the
reference run in the same low precision (the bound of test_ssd_split: twice the low-precision reference's
error): the exact staged chunk output (default) and with H_in as hi + lo.

Shapes: "split", the SSD call of test_ssd_split (B2 L21 H4 P4 G2 N5, D, dt_bias, softplus, float32 initial
states, seq_idx; one chunk); "chunks", B2 L700 H4 P64 G1 N64 chunk 64 with initial states (several chunks: the
chunk state and H_in roundings as well); "model", B1 L1024 H8 P64 N128 chunk 256 (the benchmark's head shape);
"lean", B1 L600 H4 P64 N200 chunk 128 (N > 128: the lean chunk output).

    python benchmarks/device/ssdfwd_seeds.py [OUT.json] [SEEDS]   (importable: main(out, seeds))
"""
from __future__ import annotations

import json
import os
import sys

import torch

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, ROOT)
import ssm.ops as ops  # noqa: E402
from ssm.ops.python import reference  # noqa: E402
from tests.ops.harness import rel_err  # noqa: E402

SHAPES = {  # name: (B, L, H, P, G, N, chunk, seq_idx)
    "split": (2, 21, 4, 4, 2, 5, 8, True),
    "chunks": (2, 700, 4, 64, 1, 64, 64, False),
    "model": (1, 1024, 8, 64, 1, 128, 256, False),
    "lean": (1, 600, 4, 64, 1, 200, 128, False),
}
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU: a dry run of the driver
# the default (the exact staged output: tiled C B^T, the diagonal tile's key factors) and H_in as hi + lo
KERNELS = {"exact": {}, "hilo": {"SSM_SSD_FWD_HIN_SPLIT": "1"}}


def case(shape, seed, dtype):
    """Inputs like the split test's SSD call: (args, kwargs) with low-precision x, dt, B, C."""
    B, L, H, P, G, N, chunk, seq = shape
    g = torch.Generator(device=DEV).manual_seed(seed)
    rn = lambda *s: torch.randn(*s, device=DEV, generator=g)  # noqa: E731
    x, dt, Bm, Cm = rn(B, L, H, P), rn(B, L, H), rn(B, L, G, N), rn(B, L, G, N)
    A = -torch.rand(H, device=DEV, generator=g) - 0.1
    kw = dict(D=rn(H), dt_bias=rn(H) * 0.5, dt_softplus=True, initial_states=rn(B, H, P, N))
    if seq:
        kw["seq_idx"] = torch.sort(torch.randint(0, 3, (B, L), device=DEV, generator=g), 1).values.int()
    return [x.to(dtype), dt.to(dtype), A, Bm.to(dtype), Cm.to(dtype), chunk], kw


def errors(shape, seeds, dtype):
    """{kernel or ref: [relative error of y per seed]}."""
    out = {k: [] for k in list(KERNELS) + ["ref"]}
    for seed in range(seeds):
        args, kw = case(shape, seed, dtype)
        f64 = lambda v: v.double() if torch.is_tensor(v) and v.is_floating_point() else v  # noqa: E731
        want = reference.ssd_chunk_scan(*map(f64, args), **{k: f64(v) for k, v in kw.items()})
        for name, env in KERNELS.items():
            os.environ.update(env)
            out[name].append(rel_err(ops.ssd_chunk_scan(*args, **kw), want))
            for k in env:
                del os.environ[k]
        out["ref"].append(rel_err(reference.ssd_chunk_scan(*args, **kw), want))
    return out


def summary(errs):
    """Median / max error and the median / max / over-1.1 count of the ratio to the reference's, per kernel."""
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    res = {}
    for k, v in errs.items():
        ratio = [a / b for a, b in zip(v, errs["ref"])]
        res[k] = dict(median=med(v), max=max(v), ratio_median=med(ratio), ratio_max=max(ratio),
                      over_1p1=sum(r > 1.1 for r in ratio), over_2=sum(r > 2 for r in ratio), n=len(v))
    return res


def main(out=None, seeds=40):
    ops._kernels.POISON_OUTPUTS = False
    rows = {}
    for dtype in (torch.bfloat16, torch.float16):
        for name, shape in SHAPES.items():
            if dtype == torch.float16 and name != "split":
                continue
            n = seeds if name == "split" else max(4, seeds // 5)
            res = summary(errors(shape, n, dtype))
            rows[f"{name} {str(dtype)[6:]}"] = res
            print(f"-- y err {name} {str(dtype)[6:]} ({n} seeds): " + "; ".join(
                f"{k} med {v['median']:.2e} max {v['max']:.2e} ratio med {v['ratio_median']:.2f} "
                f"max {v['ratio_max']:.2f} >1.1: {v['over_1p1']}" for k, v in res.items() if k != "ref") +
                f"; ref med {res['ref']['median']:.2e}", flush=True)
            if out:
                with open(out, "w") as f:
                    device = torch.cuda.get_device_name() if DEV == "cuda" else "cpu"
                    json.dump(dict(device=device, rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None, int(sys.argv[2]) if len(sys.argv) > 2 else 40)
