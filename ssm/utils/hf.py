"""``mamba_ssm.utils.hf`` names: read a checkpoint's config and tensors from a directory or the HF cache.

Unlike the reference, transformers is not needed, any supported weights format is read
(see ssm.utils.weights), and ``dtype`` is honoured (COMPAT §7.7).
"""
from __future__ import annotations

import torch

from ssm.utils.checkpoint_files import CONFIG, read_json
from ssm.utils.hub import resolve_checkpoint_dir
from ssm.utils.weights import read_checkpoint


def load_config_hf(model_name, revision=None) -> dict:
    """The checkpoint's config.json as a dict, as stored."""
    return read_json(resolve_checkpoint_dir(model_name, revision) / CONFIG)


def load_state_dict_hf(model_name, device=None, dtype=None, revision=None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under our names; floating tensors cast to dtype, all moved to device."""
    _, state = read_checkpoint(model_name, revision)
    return {k: _convert(v, device, dtype) for k, v in state.items()}


def _convert(tensor: torch.Tensor, device, dtype) -> torch.Tensor:
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor if device is None else tensor.to(device)
