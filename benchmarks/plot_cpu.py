"""PNG of the CPU op benchmarks: time vs sequence length per op, the C++ kernels beside the
reference path, from the JSON that bench_selective_scan.py and bench_ssd.py wrote.

Needs matplotlib (a benchmark-only tool: benchmarks/requirements.txt).
Usage: python benchmarks/plot_cpu.py [--dir benchmarks/results/cpu] [--out PATH.png]
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def scan_series(path: Path) -> dict:
    """{(mode, dtype): {label: [(L, ms)]}} from selective_scan.json."""
    out: dict = {}
    for r in json.loads(path.read_text())["results"]:
        if r["op"] != "selective_scan":
            continue
        L = int(re.search(r"L(\d+)", r["shape"]).group(1))
        series = out.setdefault((r["mode"], r["dtype"]), {})
        threads = next(k for k in r if k.startswith("cpu_ms_") and k != "cpu_ms_1thread")
        for label, key in (("C++ kernel, " + threads[len("cpu_ms_"):].replace("threads", " threads"), threads),
                           ("C++ kernel, 1 thread", "cpu_ms_1thread"), ("reference (1 thread)", "reference_ms_1thread")):
            if r.get(key) is not None:
                series.setdefault(label, []).append((L, r[key]))
    return out


def ssd_series(path: Path) -> dict:
    out: dict = {}
    for r in json.loads(path.read_text())["results"]:
        series = out.setdefault((r["pass_"], r["dtype"]), {})
        series.setdefault("C++ kernel", []).append((r["L"], r["cpu_ms"]))
        series.setdefault("reference", []).append((r["L"], r["reference_ms"]))
    return out


def panel(ax, title: str, series: dict) -> None:
    for label, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                linestyle="--" if label.startswith("reference") else "-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("ms (median)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=ROOT / "benchmarks/results/cpu")
    parser.add_argument("--out", type=Path, default=None, help="default: DIR/ops_vs_L.png")
    args = parser.parse_args()
    panels = []
    for (mode, dtype), series in sorted(scan_series(args.dir / "selective_scan.json").items()):
        panels.append((f"selective_scan {mode} {dtype} (B1 D1536 N16)", series))
    for (mode, dtype), series in sorted(ssd_series(args.dir / "ssd.json").items()):
        panels.append((f"ssd_chunk_scan {mode} {dtype} (B1 H24 P64 N128)", series))
    cols = 4
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels):
        panel(ax, title, series)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("ssm CPU ops vs the PyTorch reference path (2-core shared machine; see the JSON for load)", fontsize=10)
    fig.tight_layout()
    out = args.out or args.dir / "ops_vs_L.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
