"""ssm: selective state-space models (Mamba-1, Mamba-2/SSD, hybrids) on our own CPU and CUDA kernels;
a drop-in for ``mamba_ssm`` (``Mamba``, ``Mamba2``, ``MambaLMHeadModel``, ``selective_scan_fn``,
``mamba_inner_fn``). Submodules load on first use."""
import importlib

__version__ = "0.1.0"

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
