"""``ssm bench``: run every ``benchmarks/bench_*.py`` (their ``main``), print a table, and write JSON
(+ a PNG when matplotlib is importable) under ``benchmarks/results/<machine>/``. A script that takes
``--out`` writes its JSON there too. ``--quick`` passes a script's own quick option (``--quick``, else
fewer ``--reps`` / ``--repeats``). Scripts named ``*cuda*`` are skipped without a GPU. A failing script
is reported and the others still run; the exit status is then 1."""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import platform
import re
import sys
import time
import traceback
from pathlib import Path

import torch

from ssm.cli.data import CliError

ROOT = Path(__file__).resolve().parent.parent.parent / "benchmarks"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="pass --quick to the scripts that take it")
    p.add_argument("--only", nargs="*", default=[], help="run only these scripts (e.g. bench_ssd)")
    p.add_argument("--dir", default=str(ROOT), help="folder of the bench_*.py scripts")
    p.add_argument("--results", default=None, help="results folder (default: <dir>/results/<machine>)")


def machine_name() -> str:
    """CPU model (and GPU when present) as a folder name, e.g. 'intel-xeon-8481c' or '...-nvidia-h100'."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1] for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    name = cpu + (" " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
    name = re.sub(r"\(r\)|\(tm\)|cpu @.*?ghz|processor|@.*", "", name.lower())
    return re.sub(r"[^a-z0-9.]+", "-", name).strip("-") or "machine"


QUICK = [("--quick", []), ("--reps", ["2"]), ("--repeats", ["1"])]


def script_args(path: Path, quick: bool, folder: Path) -> list[str]:
    """--out into the results folder where the script takes it; its quick option with --quick."""
    source = path.read_text()
    takes = lambda flag: re.search(rf"[\"']{flag}[\"']", source) is not None  # noqa: E731
    args = ["--out", str(folder / f"{path.stem}.json")] if takes("--out") else []
    if quick:
        args += next(([flag, *values] for flag, values in QUICK if takes(flag)), [])
    return args


def run_script(path: Path, quick: bool, folder: Path) -> dict:
    """Import the script and call its main() with sys.argv set; capture what it prints."""
    argv = [str(path)] + script_args(path, quick, folder)
    if "cuda" in path.stem and not torch.cuda.is_available():
        return dict(script=path.name, args=argv[1:], status="skipped", error="no CUDA GPU", seconds=0.0, output="")
    out, start, saved = io.StringIO(), time.perf_counter(), sys.argv
    status, error = "ok", ""
    try:
        sys.argv = argv
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        with contextlib.redirect_stdout(out):
            spec.loader.exec_module(module)
            module.main()
    except BaseException as exc:  # a script may sys.exit or raise anything: report it and go on
        status = "failed"
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]
    finally:
        sys.argv = saved
    return dict(script=path.name, args=argv[1:], status=status, error=error,
                seconds=round(time.perf_counter() - start, 2), output=out.getvalue())


def plot(records: list[dict], folder: Path) -> list[str]:
    """One PNG: wall time of each script (more plots come from the scripts themselves)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return []
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(records)))
    ax.barh([r["script"] for r in records], [r["seconds"] for r in records],
            color=["tab:red" if r["status"] == "failed" else "tab:blue" for r in records])
    ax.set_xlabel("seconds (red: failed)")
    ax.set_title(f"ssm bench on {folder.name}")
    fig.tight_layout()
    fig.savefig(folder / "bench.png")
    plt.close(fig)
    return ["bench.png"]


def run(args) -> int:
    scripts = sorted(Path(args.dir).glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem in args.only or s.name in args.only]
    if not scripts:
        raise CliError(f"no benchmark scripts (bench_*.py) in {args.dir}" + (f" named {args.only}" if args.only else ""))
    folder = Path(args.results) if args.results else Path(args.dir) / "results" / machine_name()
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for path in scripts:
        print(f"== {path.name}", flush=True)
        record = run_script(path, args.quick, folder)
        print(record["output"], end="")
        if record["error"]:
            print(f"FAILED: {record['error']}")
        records.append(record)
    print(f"\n{'script':<28} {'status':<8} {'seconds':>8}  error")
    for r in records:
        print(f"{r['script']:<28} {r['status']:<8} {r['seconds']:>8.1f}  {r['error']}")
    plots = plot(records, folder)
    info = dict(machine=machine_name(), cuda=torch.cuda.is_available(), torch=torch.__version__,
                python=platform.python_version(), time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    (folder / "bench.json").write_text(json.dumps(dict(info, runs=records, plots=plots), indent=2) + "\n")
    print(f"wrote {folder / 'bench.json'}" + (f" and {', '.join(plots)}" if plots else ""))
    return 0 if all(r["status"] != "failed" for r in records) else 1
