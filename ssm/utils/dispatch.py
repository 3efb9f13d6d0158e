"""Backend detection and selection.

An op runs on ``cuda`` when the CUDA module is built and its inputs are on a GPU, on
``cpu`` when the CPU module is built and its inputs are on the CPU, and otherwise on
``reference`` (pure PyTorch, ``ssm.ops.python.reference``). ``SSM_BACKEND`` forces one;
a forced backend that cannot run raises with the reason. A fallback to the reference on a
fast backend's device is reported once per (op, reason) as a warning.
"""
from __future__ import annotations

import importlib
import os
import warnings

import torch

BACKENDS = ("reference", "cpu", "cuda")

_modules: dict[str, object] = {}
_import_errors: dict[str, str] = {}
_warned: set[tuple[str, str]] = set()
_usable: set[str] = set()


def _load(name: str):
    """The extension module ssm._<name>, or None (with the reason kept)."""
    if name not in _modules and name not in _import_errors:
        try:
            _modules[name] = importlib.import_module(f"ssm._{name}")
        except ImportError as e:
            _import_errors[name] = _why_missing(name, e)
    return _modules.get(name)


def _why_missing(name: str, error: Exception) -> str:
    try:
        from ssm import _build_info
        status = _build_info.cuda_module if name == "cuda" else "built"
    except ImportError:
        status = "unknown (ssm was not installed through its build)"
    if status != "built":
        return f"the ssm._{name} module was not built ({status})"
    return f"the ssm._{name} module failed to import: {error}"


def cpu_module():
    return _load("cpu")


def cuda_module():
    return _load("cuda")


def has_cpu_kernels() -> bool:
    """True when the C++ CPU extension is built and importable."""
    return cpu_module() is not None


def has_cuda_kernels() -> bool:
    """True when the CUDA extension is built and a CUDA device is usable."""
    mod = cuda_module()
    return mod is not None and torch.cuda.is_available() and mod.device_count() > 0


def missing_reason(backend: str) -> str | None:
    """Why a backend's module is unavailable, or None when it is available."""
    if backend == "reference":
        return None
    if backend == "cpu":
        return None if has_cpu_kernels() else _import_errors.get("cpu", "not built")
    if cuda_module() is None:
        return _import_errors.get("cuda", "not built")
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None if cuda_module().device_count() > 0 else "the CUDA module sees no device"


def _missing_reason_cached(backend: str) -> str | None:
    """missing_reason, remembered once the backend is usable (a built module stays built)."""
    if backend in _usable:
        return None
    reason = missing_reason(backend)
    if reason is None:
        _usable.add(backend)
    return reason


def get_available_backend(device: torch.device | str | None = None) -> str:
    """The fastest backend available for tensors on ``device`` (default: cuda if usable, else cpu)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(device).type
    if kind == "cuda" and has_cuda_kernels():
        return "cuda"
    if kind == "cpu" and has_cpu_kernels():
        return "cpu"
    return "reference"


def forced_backend() -> str | None:
    value = os.environ.get("SSM_BACKEND")
    if not value:
        return None
    value = value.strip().lower()
    if not value:
        return None
    if value not in BACKENDS:
        raise ValueError(f"SSM_BACKEND: expected one of {BACKENDS}, got {value!r}")
    return value


def select_backend(op: str, device: torch.device, kernel_reason) -> str:
    """Pick the backend for one call of ``op`` on ``device``.

    ``kernel_reason(backend)`` returns None when that backend's kernel can run these
    inputs, else a short reason (unsupported dtype, size, layout, not implemented).
    """
    native = device.type if device.type in ("cpu", "cuda") else None
    forced = forced_backend()
    if forced == "reference":
        return "reference"
    if forced is not None and forced != native:
        raise RuntimeError(f"{op}: SSM_BACKEND={forced} cannot run inputs on {device}")
    reason = f"no {op} backend for device {device}" if native is None else _missing_reason_cached(native)
    if reason is None:
        reason = kernel_reason(native)
    if reason is None:
        return native
    if forced is not None:
        raise RuntimeError(f"{op}: SSM_BACKEND={forced} cannot run this call: {reason}")
    _warn_fallback(op, native or device.type, reason)
    return "reference"


def _warn_fallback(op: str, backend: str, reason: str) -> None:
    key = (op, reason)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"ssm: {op} falls back to the reference path on {backend}: {reason}",
                      RuntimeWarning, stacklevel=4)
