"""Device-round timing of the batch-64 decode (session 9, engineer decode64, branch decode64c), one Python process
that runs no tests (no NaN poisoning): waits for the test process's flag file, then times the models' b64 decode per
step with cg=True (issue 6's method, benchmarks/bench_models_cuda.py) with the kernel list of one eager b64 step, and
the b64 projection shapes on cuBLAS (F.linear, cublasLt preferred) in a CUDA graph, weights rotated. Items started
past --deadline seconds are skipped; the JSON is rewritten after each.

    python3 benchmarks/device/decode64c_bench.py OUT_DIR --wait FLAG --models mamba-130m,gemms,mamba2-130m
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
import bench_cuda as bc  # noqa: E402
import bench_models_cuda as bm  # noqa: E402
from step_bench import decode_profile  # noqa: E402

from ssm.ops import batch_decode as bd  # noqa: E402

START = time.time()
# (model, layer, K, N) of the b64 decode projections on cuBLAS
GEMMS = [("130m", "in_proj", 768, 3072), ("m2-130m", "in_proj", 768, 3352), ("130m", "out_proj", 1536, 768),
         ("1.4b", "in_proj", 2048, 8192), ("1.4b", "out_proj", 4096, 2048)]


def late(deadline, what):
    if time.time() - START > deadline:
        print(f"  skipped (deadline): {what}", flush=True)
        return True
    return False


def run_gemms(copy_gbs, deadline, batch=64):
    dev, bf = torch.device("cuda"), torch.bfloat16
    for model, name, K, N in GEMMS:
        if late(deadline, f"gemm {model} {name}"):
            return
        count = max(2, min(32, (200 << 20) // (2 * N * K)))
        ws = [torch.randn(N, K, device=dev, dtype=bf) * K ** -0.5 for _ in range(count)]
        x = torch.randn(batch, K, device=dev, dtype=bf)
        for form, fn in (("cublas", lambda w: F.linear(x, w)), ("cublaslt", lambda w: bd.lt_linear(x, w))):
            with torch.inference_mode():
                ms = bc.graph_time_ms([lambda w=w: fn(w) for w in ws])
            bc.record(f"{model} {name} {form}", f"{batch}x{K} @ {K}x{N}", ms, 2 * N * K, copy_gbs,
                      note="CUDA graph, weights rotated")


def run_model(spec, out_dir, results):
    t = time.time()
    name = spec
    model = bm.make_model(name)
    ms = bm.decode_ms_per_token(model, 64)
    kernels = decode_profile(model)
    total = sum(r[2] for r in kernels)
    print(f"  {spec:18s} decode b64 per step {ms:7.3f} ms (target {bm.MODELS[name][3][3]}); eager step kernels "
          f"{total / 1e3:.3f} ms ({len(kernels)} kinds), graph - kernels {ms - total / 1e3:.3f} ms "
          f"({time.time() - t:.1f} s)", flush=True)
    results.append(dict(model=spec, decode_b64_ms=ms, target_ms=bm.MODELS[name][3][3], kernels_ms=total / 1e3,
                        kernels=kernels))
    with open(os.path.join(out_dir, f"kernels_{spec}.txt"), "w") as f:
        f.writelines(f"{us:10.1f} us x{count:<4d} {key}\n" for key, count, us in kernels)
    del model
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--wait", default="", help="wait (at most 40 s) until these files exist before using the GPU")
    ap.add_argument("--models", default="mamba-130m,mamba2-130m,mamba-1.4b,mamba2-1.3b,gemms",
                    help="models in order; 'gemms' times the projection shapes at that point")
    ap.add_argument("--deadline", type=float, default=1e9)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    while args.wait and not all(os.path.exists(f) for f in args.wait.split(",")) and time.time() - START < 40:
        time.sleep(0.2)
    print(f"start at {time.time() - START:.1f} s", flush=True)
    copy_gbs = bc.copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}: copy {copy_gbs:.0f} GB/s", flush=True)
    models: list = []

    def dump():
        with open(os.path.join(args.out, "decode64c_bench.json"), "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), copy_gbs=copy_gbs, gemms=bc.RESULTS, models=models),
                      f, indent=1)
    for spec in [m for m in args.models.split(",") if m]:
        if spec == "gemms":
            run_gemms(copy_gbs, args.deadline)
        elif not late(args.deadline, spec):
            run_model(spec, args.out, models)
        dump()


if __name__ == "__main__":
    main()
