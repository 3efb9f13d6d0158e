"""SASS census of the Mamba-1 scan forward kernels (engineer m1scan, session 10): for each kernel (bf16, y
written, no checkpoints) the static instruction count by class (MUFU by function, FFMA / FMUL / FADD, shared
and global loads / stores, barriers, the rest) for the whole kernel and for each loop (a backward branch's
range). Reads the built module with cuobjdump; with --dump DIR also writes each kernel's SASS there.

Usage: python benchmarks/device/m1scan_sass.py [--so MODULE.so] [--dump DIR]
"""
from __future__ import annotations

import argparse
import glob
import re
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

KERNELS = {
    "rows 2ch": "_ZN3ssm4cuda9scan_rows15fwd_rows_kernelI13__nv_bfloat16Lb1ELb0ELi4ELi2EEEvNS_19SelectiveScanParamsE",
    "rows 1ch": "_ZN3ssm4cuda9scan_rows15fwd_rows_kernelI13__nv_bfloat16Lb1ELb0ELi8ELi1EEEvNS_19SelectiveScanParamsE",
    "wide": "_ZN3ssm4cuda9scan_wide15fwd_wide_kernelI13__nv_bfloat16Lb0EEEvNS_19SelectiveScanParamsE",
}
LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
TARGET = re.compile(r"0x([0-9a-f]+)")


def klass(op: str) -> str:
    if op.startswith("MUFU"):
        return op
    for k in ("FFMA", "FMUL", "FADD", "FMNMX", "FSEL", "FSETP", "LDS", "STS", "LDG", "STG", "BAR", "SHFL", "F2FP",
              "PRMT", "IMAD", "IADD", "LOP3", "SHF", "SEL", "ISETP", "MOV", "BRA"):
        if op.startswith(k):
            return k
    return "other"


def census(lines) -> str:
    c = Counter(klass(op) for _, op, _ in lines)
    keys = [k for k in c if k.startswith("MUFU")] + ["FFMA", "FMUL", "FADD", "LDS", "STS", "LDG", "STG", "BAR"]
    rest = sum(v for k, v in c.items() if k not in keys)
    return f"{len(lines):5d} instr: " + ", ".join(f"{k} {c[k]}" for k in keys if c[k]) + f", other {rest}"


def dump(so: str, name: str) -> str:
    r = subprocess.run(["cuobjdump", "-sass", "-fun", name, so], capture_output=True, text=True, timeout=20)
    return r.stdout or r.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--so", default=None)
    ap.add_argument("--dump", default=None)
    a = ap.parse_args()
    so = a.so or sorted(glob.glob("ssm/_cuda*.so"))[0]
    with ThreadPoolExecutor(len(KERNELS)) as pool:
        texts = list(pool.map(lambda name: dump(so, name), KERNELS.values()))
    for tag, text in zip(KERNELS, texts):
        if a.dump and tag.startswith("wide"):
            Path(a.dump, f"sass_{tag.replace(' ', '_')}.txt").write_text(text)
        ins = [(int(m.group(1), 16), m.group(3), m.group(4)) for m in LINE.finditer(text)]
        if not ins:
            print(f"{tag}: no SASS ({text.strip()[:120]})")
            continue
        print(f"{tag:10s} whole  {census(ins)}")
        for addr, op, args in ins:  # loops: backward branches
            t = TARGET.search(args)
            if op.startswith("BRA") and t and int(t.group(1), 16) < addr:
                body = [x for x in ins if int(t.group(1), 16) <= x[0] <= addr]
                print(f"{tag:10s} loop {int(t.group(1), 16):#07x}-{addr:#07x} {census(body)}")


if __name__ == "__main__":
    main()
