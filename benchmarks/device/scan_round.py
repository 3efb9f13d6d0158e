"""Device round of engineer scan (session 7; issues 5 and 6: the selective scan in Mamba-1 training and
large-model prefill), in one process (one torch start-up): the GPU tests of the scan and of mamba_inner first
(pytest.main, stopped after --test-budget seconds), then without NaN poisoning (reset after the tests), each
part skipped once --budget seconds have passed:

1. the backward's handoff check repeated with both backward forms (SSM_SCAN_BWD_ILP=0 / 1): the largest
   difference in bf16 ulps between the gradients of a backward fed the forward's checkpoints and of one that
   computes its own, and between two identical calls (the atomics' order alone);
2. the scan kernels at the Mamba-1 model shapes (mamba_ssm's layout, B 8, L 2048, N 16, bf16): the backward
   forms at D 1536 (SSM_SCAN_BWD_ILP 1 (default), 0); last, the forward at D 4096 with one / two channels per thread;
3. (between the two) mamba-130m training step (checkpoint_lvl 1, which keeps y and the chunk states, against level
   2, the session-6 level 1) and mamba-1.4b prefill (one / two channels per thread), event medians and kernel tables.

With --final (round 2): the handoff check, the models as in 3., then the kernels at issue 5's bench shape and at
D 1536 / 4096 (model layout), the row forward with one and two channels per thread.

Usage: python benchmarks/device/scan_round.py OUT_DIR [--test-budget SECONDS] [--budget SECONDS] [--final]
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "device"))
from e2e_profile import DEV, VOCAB, event_ms, make_model, prefill_fn, profile, train_fn  # noqa: E402
from scan_time import inputs, measure, rel  # noqa: E402
from ssm.modules import mamba1  # noqa: E402
from ssm.ops import _kernels  # noqa: E402
from tests.ops.test_selective_scan_layouts import bf16_ulps, make, make_rows  # noqa: E402

scan_module = importlib.import_module("ssm.ops.selective_scan")  # (ssm.ops.selective_scan is the function)
START = time.perf_counter()
KEYS = ("SSM_SCAN_ROWS", "SSM_SCAN_BWD_ILP")
NAMES = ["du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddt_bias"]


def set_env(form: dict) -> None:
    for k in KEYS:
        os.environ.pop(k, None)
    os.environ.update(form)


def dist(a, b) -> float:
    """bf16: the largest distance in ulps; float32: the largest relative difference."""
    if a.dtype == torch.bfloat16:
        return float(bf16_ulps(a, b).max())
    return float(((a - b).abs() / b.abs().clamp_min(1e-6)).max())


def handoff(reps: int) -> dict:
    res = {}
    for ilp in "01":
        set_env({"SSM_SCAN_BWD_ILP": ilp})
        worst = {"ck": dict.fromkeys(NAMES, 0.0), "again": dict.fromkeys(NAMES, 0.0)}
        over = {"ck": 0, "again": 0}
        for rep in range(reps):
            L, layout = (17, 300)[rep % 2], ("channels_last", "rows")[rep // 2 % 2]
            inp = make(2, 70, L, 16, torch.bfloat16, DEV) if layout == "channels_last" else \
                make_rows(2, 70, L, 16, 2, torch.bfloat16, DEV, pad=-L % 8)
            args = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "dt_bias")]
            y, _, ck = scan_module._fwd_run(*args, None, None, None, True, False, True)
            dy = torch.randn_like(y)
            run = lambda c: scan_module._bwd_impl(*args, None, None, None, dy, dy.new_empty(0), True, False, c)
            with_ck, plain, again = run(ck), run(None), run(None)
            for tag, other in (("ck", with_ck), ("again", again)):
                d = {n: dist(a, b) for n, a, b in zip(NAMES, other, plain)}
                over[tag] += any(d[n] > 1 for n in ("dB", "dC"))
                for n in NAMES:
                    worst[tag][n] = max(worst[tag][n], d[n])
        res[f"ILP={ilp}"] = dict(reps=reps, worst=worst, reps_over_1ulp=over)
        print(f"handoff ILP={ilp} ({reps} reps): max dB/dC ulps ck {worst['ck']['dB']:.0f}/{worst['ck']['dC']:.0f}, "
              f"again {worst['again']['dB']:.0f}/{worst['again']['dC']:.0f}; du/ddelta/dz ulps ck "
              f"{worst['ck']['du']:.0f}/{worst['ck']['ddelta']:.0f}/{worst['ck']['dz']:.0f}; reps over 1 ulp {over}",
              flush=True)
    set_env({})
    return res


D1536 = ("model D1536", 1536, [{}, {"SSM_SCAN_BWD_ILP": "0"}], True)
D4096 = ("model D4096", 4096, [{}, {"SSM_SCAN_ROWS": "2"}], False)
# --final: the defaults (and the two-channel row forward) at the model shapes and issue 5's bench shape ((B, D, L) rows)
FINAL = [("bench D4096", 4096, [{}, {"SSM_SCAN_ROWS": "2"}], True), D4096, ("model D1536", 1536, [{}], True)]
WORK = [("mamba-130m", "train", [("lvl1", {}, 1), ("lvl2", {}, 2), ("lvl1 again", {}, 1)]),
        ("mamba-1.4b", "prefill", [("default", {}, 1), ("two channels", {"SSM_SCAN_ROWS": "2"}, 1),
                                    ("default again", {}, 1)])]



def kernels(cases, budget: float, out: dict, path: Path) -> None:
    for label, D, forms, bwd in cases:
        args = inputs(8, D, 2048, 16, label.startswith("model"))
        base = None
        for form in forms:
            if time.perf_counter() - START > budget:
                return
            set_env(form)
            r, y, grads = measure(args, 8, D, 2048, bwd)
            tag = f"{label} {' '.join(f'{k[9:]}={v}' for k, v in form.items()) or 'default'}"
            if base is not None:
                r["y_rel_diff"] = rel(y, base[0])
                if grads and base[1]:
                    r["grad_rel_diff"] = max(rel(g, h) for g, h in zip(grads, base[1]))
            base = base or (y, grads)
            out["kernels"][tag] = r
            print(f"{tag:40s} fwd {r['fwd_kernel_ms']:.3f} ms (event {r['fwd_event_ms']:.3f})"
                  + (f"  bwd {r['bwd_kernel_ms']:.3f}  fwd+bwd kernels {r['fwd_bwd_kernels_ms']:.3f}"
                     if "bwd_kernel_ms" in r else "")
                  + (f"  diff y {r['y_rel_diff']:.1e}" if "y_rel_diff" in r else "")
                  + (f" grads {r['grad_rel_diff']:.1e}" if "grad_rel_diff" in r else ""), flush=True)
            path.write_text(json.dumps(out, indent=1))
    set_env({})


def models(work, budget: float, out: dict, odir: Path, path: Path) -> None:
    for name, kind, variants in work:
        if time.perf_counter() - START > budget:
            return
        model = make_model(name)
        if kind == "train":
            ids = torch.randint(0, VOCAB, (8, 2049), device=DEV)
            model.train()
            fn = train_fn(model, ids)
        else:
            ids = torch.randint(0, VOCAB, (8, 2048), device=DEV)
            fn = prefill_fn(model, ids)
        for tag, form, lvl in variants:
            if time.perf_counter() - START > budget:
                break
            set_env(form)
            mamba1.CHECKPOINT_LVL = lvl
            ms = event_ms(fn, 3)
            row = dict(model=name, work=kind, variant=tag, event_ms=ms)
            if "again" not in tag:
                prof = profile(fn, odir / f"kernels_{name}_{kind}_{tag}.txt")
                row.update(kernels_ms=prof["kernels_ms"], top=prof["top"][:4])
            if kind == "train":
                torch.cuda.reset_peak_memory_stats()
                fn()
                row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            out["models"].append(row)
            print(f"{name:11s} {kind:8s} {tag:14s} event {ms:8.2f} ms"
                  + (f"  kernels {row['kernels_ms']:.2f} ms" if "kernels_ms" in row else "")
                  + (f"  peak {row['peak_gib']:.1f} GiB" if "peak_gib" in row else ""), flush=True)
            path.write_text(json.dumps(out, indent=1))
        set_env({})
        mamba1.CHECKPOINT_LVL = 1
        model.zero_grad(set_to_none=True)
        del model, fn
        torch.cuda.empty_cache()


class Deadline:
    """pytest plugin: no test starts after the deadline (the summary still prints)."""
    def __init__(self, at: float):
        self.at = at

    def pytest_runtest_logfinish(self, nodeid, location):
        if time.perf_counter() - START > self.at:
            self.session.shouldstop = f"test budget of {self.at:.0f} s spent"

    def pytest_sessionstart(self, session):
        self.session = session


def tests(odir: Path, budget: float) -> int:
    import pytest
    saved = (_kernels.POISON_OUTPUTS, _kernels.PARALLEL_MIN_WORK)
    files = ["tests/ops/test_selective_scan_layouts.py", "tests/ops/test_mamba_inner.py",
             "tests/ops/test_selective_scan.py"]
    args = ["-q", "-m", "cuda", "-k", "not long_sequence", "-p", "no:cacheprovider", "-rf",
            f"--junitxml={odir / 'pytest.xml'}", *[str(ROOT / f) for f in files]]
    rc = pytest.main(args, plugins=[Deadline(budget)])
    _kernels.POISON_OUTPUTS, _kernels.PARALLEL_MIN_WORK = saved
    set_env({})
    torch.use_deterministic_algorithms(False)
    print(f"pytest rc={int(rc)} at {time.perf_counter() - START:.1f} s; poisoning {_kernels.POISON_OUTPUTS}",
          flush=True)
    return int(rc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--test-budget", type=float, default=18.0)
    ap.add_argument("--budget", type=float, default=36.0)
    ap.add_argument("--final", action="store_true", help="round 2: the kernels of FINAL after the models")
    a = ap.parse_args()
    odir = Path(a.out)
    odir.mkdir(parents=True, exist_ok=True)
    path = odir / "scan_round.json"
    out = dict(device=torch.cuda.get_device_name(), kernels={}, models=[])
    print(f"{out['device']}; imports {time.perf_counter() - START:.1f} s", flush=True)
    out["pytest_rc"] = tests(odir, a.test_budget)
    out["handoff"] = handoff(12 if a.final else 24)
    path.write_text(json.dumps(out, indent=1))
    if a.final:
        models(WORK, a.budget * 0.85, out, odir, path)
        kernels(FINAL, a.budget, out, path)
    else:
        kernels([D1536], a.budget * 0.6, out, path)
        models(WORK, a.budget * 0.85, out, odir, path)
        kernels([D4096], a.budget, out, path)
    print(f"done at {time.perf_counter() - START:.1f} s", flush=True)


if __name__ == "__main__":
    main()
