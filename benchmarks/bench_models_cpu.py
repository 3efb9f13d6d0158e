"""End-to-end CPU benchmark of models shaped like state-spaces/mamba-130m (Mamba-1) and
mamba2-130m (Mamba-2), random weights, float32 and bfloat16:

- prefill tokens/s (1 x 2048 and 8 x 512; last-token logits only, as generation's prefill),
- decode tokens/s (batch 1 and 16; greedy generate after an 8-token prompt, the time of
  ``steps`` extra tokens = generate(8 + 1 + steps) - the least of two generate(8 + 1); not reported
  when the prefill's noise swamps the steps),
- training step tokens/s (4 x 512; forward + cross-entropy over all logits + backward, no optimizer),

for ``ssm`` with its C++ CPU kernels, the same model on the reference path (SSM_BACKEND=reference)
and Hugging Face transformers' MambaForCausalLM / Mamba2ForCausalLM with the same weights
(exported with ssm.utils.weights.save_hf; logits are compared on a short input first).

Each measurement is time-boxed: a probe at 1/8 of the work (1/32 for the slow paths; it is also
the warm-up) predicts its time;
a measurement predicted above --budget seconds is skipped with a note, and the probe's own
tokens/s is reported instead, marked with * (the slow paths' per-token cost barely depends on the
length). The slow paths get one repeat.
Prints a table and writes JSON to benchmarks/results/cpu/models.json.

With model_floors (unless --no-floors): the machine's limits measured first, then per (model, dtype)
the floor of prefill and decode and transformers' time over it (the largest reachable speed-up).

Usage: python benchmarks/bench_models_cpu.py [--models mamba1,mamba2] [--dtypes float32,bfloat16]
       [--impls ssm,reference,hf] [--workloads NAMES] [--budget 60] [--threads N] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import model_floors  # noqa: E402
from bench_norm_conv import machine_info  # noqa: E402
from ssm.models.config import MambaConfig  # noqa: E402
from ssm.models.lm import MambaLMHeadModel  # noqa: E402
from ssm.utils.weights import save_hf  # noqa: E402

VOCAB = 50277
PROMPT = 8
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ---- models ------------------------------------------------------------------------------------

def make_ssm(kind: str) -> MambaLMHeadModel:
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=768, n_layer=24, vocab_size=VOCAB, ssm_cfg={"layer": "Mamba1" if kind == "mamba1" else "Mamba2"})
    return MambaLMHeadModel(cfg).eval()


def make_hf(model: MambaLMHeadModel):
    """transformers' model with the same weights, or (None, why)."""
    try:
        import transformers
    except ImportError as e:
        return None, f"transformers not importable: {e}"
    with tempfile.TemporaryDirectory() as d:
        save_hf(model, d)
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    return hf, f"transformers {transformers.__version__}"


def logits_agree(model, hf) -> dict:
    ids = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        ours = model(ids).logits[..., :VOCAB].double()
        theirs = hf(ids, use_cache=False).logits[..., :VOCAB].double()
    diff = (ours - theirs).abs().max().item()
    return {"max_abs_diff": diff, "max_abs_logit": ours.abs().max().item(), "agree": diff <= 1e-3 * max(1.0, ours.abs().max().item())}


# ---- workloads: fn(scale) runs the work at 1/scale size (probe) or full size (scale 1) -------------

def prefill_fn(impl, model, batch, seqlen):
    def run(scale=1):
        ids = torch.randint(0, VOCAB, (batch, max(1, seqlen // scale)))
        with torch.no_grad():
            if impl == "hf":
                model(ids, use_cache=False, logits_to_keep=1)
            else:
                model(ids, num_last_tokens=1)
    return run, batch * seqlen


def generate(impl, model, ids, new_tokens):
    if impl == "hf":
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    else:
        model.generate(ids, max_length=ids.shape[1] + new_tokens, top_k=1)


def decode_fn(impl, model, batch, steps):
    ids = torch.randint(0, VOCAB, (batch, PROMPT))

    def run(scale=1):
        n = max(8, steps // scale)  # a probe of fewer steps drowns in the prefill's noise
        with torch.no_grad():
            # the prefill's time, at its least noisy (wall, CPU)
            base = [clocks(lambda: generate(impl, model, ids, 1)) for _ in range(2)]
            full = clocks(lambda: generate(impl, model, ids, 1 + n))
        # time of the n extra steps, normalized to steps / scale (the work a probe stands for); NaN
        # when the prefill's noise swamped the steps: no honest number
        return tuple((f - b) * steps / scale / n if f > b else float("nan")
                     for f, b in zip(full, (min(c[0] for c in base), min(c[1] for c in base))))
    return run, batch * steps


def train_fn(impl, model, batch, seqlen):
    def run(scale=1):
        ids = torch.randint(0, VOCAB, (batch, max(2, seqlen // scale)))
        logits = model(ids, use_cache=False).logits if impl == "hf" else model(ids).logits
        loss = F.cross_entropy(logits[:, :-1, :VOCAB].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)
    return run, batch * seqlen


# ---- timing --------------------------------------------------------------------------------------

def clocks(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process's threads) of fn(): on a machine shared with other
    processes the wall clock counts the time others held the core, the CPU clock does not."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def timed(run, scale=1) -> tuple[float, float]:
    """(wall, CPU) seconds of run(scale), or the pair it measured itself (decode_fn)."""
    measured = None

    def call():
        nonlocal measured
        measured = run(scale)
    both = clocks(call)
    return measured if measured is not None else both


def measure(run, tokens: int, reps: int, budget: float, scale: int) -> dict:
    """tokens/s of run() (median of reps), time-boxed by a 1/scale-size probe (which also warms up).
    Over budget, the full size is skipped and the probe's own tokens/s is reported, marked."""
    if reps > 1 or scale == 8:
        timed(run, scale)  # the fast path's first call carries one-time costs: warm up first
    probe, probe_cpu = timed(run, scale)
    if probe != probe:  # NaN: see decode_fn
        return {"skipped": "not measurable: generate(1 + n) took no longer than generate(1) (a busy machine)"}
    predicted = probe * scale
    if predicted > budget:
        return {"skipped": f"full size predicted {predicted:.0f} s > {budget:.0f} s budget",
                "probe_tokens_per_s": tokens / scale / probe, "probe_note": f"measured at 1/{scale} of the work",
                "probe_tokens_per_cpu_s": tokens / scale / probe_cpu if probe_cpu > 0 else None}
    reps = max(1, min(reps, int(budget // max(predicted, 1e-3))))
    if reps > 1:
        timed(run)  # full-size warm-up for the fast path
    pairs = [p for p in (timed(run) for _ in range(reps)) if p[0] == p[0]]
    if not pairs:
        return {"skipped": "not measurable: generate(1 + n) took no longer than generate(1) (a busy machine)"}
    t = statistics.median(p[0] for p in pairs)
    cpu = [p[1] for p in pairs if p[1] == p[1] and p[1] > 0]
    c = statistics.median(cpu) if cpu else None
    return {"tokens_per_s": tokens / t, "seconds": t, "reps": reps, "cpu_seconds": c,
            "tokens_per_cpu_s": tokens / c if c else None}


class Backend:
    """SSM_BACKEND forced for the reference path, left alone otherwise."""
    def __init__(self, impl):
        self.value = "reference" if impl == "reference" else None

    def __enter__(self):
        self.old = os.environ.get("SSM_BACKEND")
        if self.value:
            os.environ["SSM_BACKEND"] = self.value

    def __exit__(self, *exc):
        os.environ.pop("SSM_BACKEND", None)
        if self.old is not None:
            os.environ["SSM_BACKEND"] = self.old


WORKLOADS = [("prefill 1x2048", prefill_fn, 1, 2048), ("prefill 8x512", prefill_fn, 8, 512),
             ("decode b1", decode_fn, 1, 32), ("decode b16", decode_fn, 16, 32), ("train 4x512", train_fn, 4, 512)]


FLOOR_WORKLOADS = ("prefill 1x2048", "prefill 8x512", "decode b1", "decode b16")


def seconds_of(rows: list[dict], workload: str, impl: str, cpu: bool = False) -> float | None:
    """The time of a workload's whole work from its row's tokens/s (a probe's when time-boxed);
    with ``cpu`` its CPU time."""
    tokens = next(batch * size for name, _, batch, size in WORKLOADS if name == workload)
    keys = ("tokens_per_cpu_s", "probe_tokens_per_cpu_s") if cpu else ("tokens_per_s", "probe_tokens_per_s")
    for r in rows:
        if r.get("workload") == workload and r.get("impl") == impl:
            tok_s = r.get(keys[0], r.get(keys[1]))
            return tokens / tok_s if tok_s else None
    return None


def floor_rows(kind: str, dname: str, model, rows: list[dict], workloads: list[str], limits: dict) -> list[dict]:
    """model_floors' verdicts for this (model, dtype), against the times of the rows just measured."""
    out = []
    for w in FLOOR_WORKLOADS:
        if w not in workloads:
            continue
        mine = [r for r in rows if r["model"] == kind and r["dtype"] == dname]
        raw = model_floors.workload_floor(model, DTYPES[dname], w, limits)
        v = model_floors.verdict(kind, w, raw, limits, seconds_of(mine, w, "hf"), seconds_of(mine, w, "ssm"),
                                 seconds_of(mine, w, "hf", cpu=True), seconds_of(mine, w, "ssm", cpu=True))
        out.append({"model": kind, "dtype": dname, "workload": w, **v})
        print(format_floor(out[-1]), flush=True)
    return out


def format_floor(f: dict) -> str:
    head = (f"{f['model']:7s} {f['dtype']:9s} {f['workload']:15s} floor {f['floor_measured_s']:8.3f} s at measured "
            f"rates ({f.get('floor_fma_peak_s', float('nan')):.3f} s at the FMA peak), torch matmuls "
            f"{f['torch_matmul_s']:8.3f} s")
    if "max_x_hf_measured_rates" not in f:
        return head
    x = f"{f['x_hf']:.2f}x" if f.get("x_hf") else "-"
    verdict = f"; target {model_floors.label(f)}" if f.get("target_x_hf") is not None else ""
    cpu = ""
    if "max_x_hf_cpu" in f:
        xc = f"{f['x_hf_cpu']:.2f}x" if f.get("x_hf_cpu") else "-"
        cpu = (f"; CPU seconds: floor {f['floor_cpu_s']:.3f} s, hf {f['hf_cpu_s']:.3f} s, ssm {xc} hf, "
               f"at most {f['max_x_hf_cpu']:.2f}x hf")
    return (f"{head}; hf {f['hf_s']:.3f} s, ssm {x} hf; at most {f['max_x_hf_measured_rates']:.2f}x hf at measured "
            f"rates, {f.get('max_x_hf_fma_peak', float('nan')):.2f}x at the FMA peak, "
            f"{f['max_x_hf_torch_matmul']:.2f}x with torch's matmuls{cpu}{verdict}")


def run_model(kind: str, dtypes: list[str], impls: list[str], budget: float, reps: int, workloads: list[str],
              save, limits: dict | None) -> list[dict]:
    model = make_ssm(kind)
    hf, hf_note = make_hf(model) if "hf" in impls else (None, "not requested")
    check = logits_agree(model, hf) if hf is not None else None
    if check is not None:
        print(f"{kind}: ssm vs {hf_note} logits (float32, 2x24): max |diff| {check['max_abs_diff']:.2e} "
              f"(max |logit| {check['max_abs_logit']:.2f}) -> {'agree' if check['agree'] else 'DISAGREE'}", flush=True)
    rows, floors = [], []
    header = {"hf_check": check, "hf": hf_note, "floors": floors}
    for dname in dtypes:
        dtype = DTYPES[dname]
        models = {"ssm": model.to(dtype), "reference": model.to(dtype)}
        if hf is not None and check["agree"]:
            models["hf"] = hf.to(dtype)
        for name, make, batch, size in WORKLOADS:
            if name not in workloads:
                continue
            for impl in impls:
                if impl not in models:
                    res = {"skipped": hf_note if hf is None else "logits disagree"}
                else:
                    run, tokens = make(impl, models[impl], batch, size)
                    with Backend(impl):
                        # the slow paths probe at 1/32 (their 1/8 probe alone can take minutes)
                        res = measure(run, tokens, reps if impl == "ssm" else 1, budget, 8 if impl == "ssm" else 32)
                row = {"model": kind, "dtype": dname, "workload": name, "impl": impl, **res}
                rows.append(row)
                print(format_row(row), flush=True)
                save([header] + rows)
        if limits is not None:
            floors += floor_rows(kind, dname, models["ssm"], rows, workloads, limits)
            save([header] + rows)
    return [header] + rows


def format_row(r: dict) -> str:
    if "tokens_per_s" in r:
        value = f"{r['tokens_per_s']:10.1f} tok/s ({r['seconds']:.2f} s x{r['reps']})"
    elif "probe_tokens_per_s" in r:
        value = f"{r['probe_tokens_per_s']:10.1f} tok/s* ({r['probe_note']}; {r['skipped']})"
    else:
        value = f"skipped: {r['skipped']}"
    return f"{r['model']:7s} {r['dtype']:9s} {r['workload']:15s} {r['impl']:9s} {value}"


def ratio_table(rows: list[dict]) -> list[dict]:
    """ssm tokens/s over the other paths', per (model, dtype, workload)."""
    by = {(r["model"], r["dtype"], r["workload"], r["impl"]): r.get("tokens_per_s", r.get("probe_tokens_per_s"))
          for r in rows if "impl" in r}
    out = []
    for (m, d, w, impl), v in by.items():
        if impl != "ssm" or v is None:
            continue
        ref, hf = by.get((m, d, w, "reference")), by.get((m, d, w, "hf"))
        out.append({"model": m, "dtype": d, "workload": w, "ssm_tok_s": v,
                    "x_reference": v / ref if ref else None, "x_hf": v / hf if hf else None})
    return out


def write(out: Path, machine: dict, started: float, results: dict, limits: dict | None) -> list[dict]:
    rows = [r for kind in results for r in results[kind][1:]]
    ratios = ratio_table(rows)
    machine = {**machine, "load_avg_now": os.getloadavg()}
    checks = {k: {n: v for n, v in results[k][0].items() if n != "floors"} for k in results}
    floors = [f for kind in results for f in results[kind][0]["floors"]]
    out.write_text(json.dumps({"machine": machine, "wall_s": time.time() - started, "hf_checks": checks,
                               "rows": rows, "ratios": ratios, "machine_limits": limits, "floors": floors},
                              indent=1))
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="mamba1,mamba2")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--impls", default="ssm,reference,hf")
    parser.add_argument("--workloads", default="", help="comma-separated names (default: all)")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per measurement")
    parser.add_argument("--reps", type=int, default=2, help="repeats of the ssm path")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for every path (default: torch's). On a busy shared machine 1 is "
                             "the fair choice: a 2-thread matmul waits for a second core that is rarely free")
    parser.add_argument("--no-floors", action="store_true", help="skip the machine limits and floors (model_floors)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu/models.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info()
    print(f"{machine['cpu']}, {machine['logical_cpus']} cpus, torch {machine['torch']} "
          f"({machine['torch_threads']} threads), load avg {machine['load_avg']}", flush=True)
    limits = None if args.no_floors else model_floors.machine_limits(machine["ssm_isa"])
    if limits is not None:
        print(f"limits: matmul GFLOP/s {limits['matmul_GFLOPs']}, FMA peak {limits['fma_peak_GFLOPs']} "
              f"({limits['fma_peak_basis']}), copy {limits['copy_GBps']:.1f} GB/s, read {limits['read_GBps']:.1f} GB/s "
              f"({limits['read_per_cpu_s_GBps']:.1f} per CPU second)", flush=True)
    results, started = {}, time.time()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(kind, partial):  # after every row, so an interrupted run keeps what it measured
        results[kind] = partial
        write(out, machine, started, results, limits)
    workloads = args.workloads.split(",") if args.workloads else [w[0] for w in WORKLOADS]
    for kind in args.models.split(","):
        run_model(kind, args.dtypes.split(","), args.impls.split(","), args.budget, args.reps, workloads,
                  lambda partial, kind=kind: save(kind, partial), limits)
    ratios = write(out, machine, started, results, limits)
    print("\n* = over the time box: tokens/s of a probe at 1/8 (ssm) or 1/32 (reference, hf) of the work")
    print(f"\n{'model':7s} {'dtype':9s} {'workload':15s} {'ssm tok/s':>10s} {'x ref':>7s} {'x hf':>7s}")
    for r in ratios:
        fmt = lambda x: f"{x:7.1f}" if x is not None else "      -"  # noqa: E731
        print(f"{r['model']:7s} {r['dtype']:9s} {r['workload']:15s} {r['ssm_tok_s']:10.1f} "
              f"{fmt(r['x_reference'])} {fmt(r['x_hf'])}")
    if limits is not None:
        print("\nfloors (model_floors): the least time of any implementation, and of torch's matmuls alone")
        for f in (f for kind in results for f in results[kind][0]["floors"]):
            print(format_floor(f))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
