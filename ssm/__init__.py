"""ssm: selective state-space models (Mamba-1, Mamba-2/SSD, hybrids) on our own CPU and CUDA kernels;
a drop-in for ``mamba_ssm`` (``Mamba``, ``Mamba2``, ``MambaLMHeadModel``, ``selective_scan_fn``,
``mamba_inner_fn``). Submodules load on first use."""
import importlib
import os

__version__ = "0.1.0"

# Large CPU tensors (>= 2 MiB) on transparent huge pages: a fresh multi-MiB kernel output otherwise
# takes one page fault per 4 KiB page (glibc maps every allocation over 32 MiB anew), which costs more
# than the kernel on some machines. torch reads THP_MEM_ALLOC_ENABLE at its first CPU allocation, so
# this works when ssm is imported before any tensor is made. A process-wide setting (child processes
# inherit it): SSM_THP=0, or THP_MEM_ALLOC_ENABLE set by the caller, leaves torch's default.
if os.environ.get("SSM_THP", "1") != "0":
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

_LAZY = {
    "Mamba": "ssm.modules", "Mamba1": "ssm.modules", "Mamba2": "ssm.modules",
    "MambaLMHeadModel": "ssm.models", "MambaConfig": "ssm.models",
    "selective_scan_fn": "ssm.ops", "mamba_inner_fn": "ssm.ops",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssm' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
