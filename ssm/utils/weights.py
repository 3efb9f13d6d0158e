"""Checkpoint load/save for MambaLMHeadModel (its from_pretrained / save_pretrained call these).

Reads the mamba_ssm layout (config.json + pytorch_model.bin), safetensors (single or sharded) and
transformers' MambaForCausalLM / Mamba2ForCausalLM directories, from a local directory or the Hugging
Face cache. Loading is all or nothing: every tensor is checked against the model (names and shapes)
before any is copied, and a mismatch raises a CheckpointError naming every offending tensor.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ssm.utils import hf_convert
from ssm.utils.checkpoint_files import (
    CONFIG, CheckpointError, read_json, read_state_dict, remove_stale_weights, shard_size_bytes,
    write_bin, write_json, write_safetensors,
)
from ssm.utils.hub import resolve_checkpoint_dir

__all__ = ["CheckpointError", "load_pretrained", "save_pretrained", "save_hf", "load_checkpoint_into",
           "read_checkpoint", "config_from_dict"]


def config_from_dict(config: dict):
    """MambaConfig(**config), naming any field MambaConfig does not have."""
    from ssm.models.config import MambaConfig
    known = {f.name for f in dataclasses.fields(MambaConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise CheckpointError(f"config.json: unknown MambaConfig field(s) {unknown}; known fields: {sorted(known)}")
    return MambaConfig(**config)


def read_checkpoint(name_or_path, revision=None) -> tuple[dict, dict]:
    """(MambaConfig dict, state dict in our tensor names) of any supported checkpoint directory."""
    directory = resolve_checkpoint_dir(name_or_path, revision)
    config = read_json(directory / CONFIG)
    state = read_state_dict(directory)
    if hf_convert.is_hf_config(config):
        return hf_convert.config_from_hf(config), hf_convert.state_dict_from_hf(state)
    return config, state


def load_pretrained(cls, name_or_path, device=None, dtype=None, revision=None, **kwargs):
    """cls(config, device=device, dtype=dtype, **kwargs) with the checkpoint's weights."""
    config_dict, state = read_checkpoint(name_or_path, revision)
    model = cls(config_from_dict(config_dict), device=device, dtype=dtype, **kwargs)
    load_checkpoint_into(model, state, source=str(name_or_path))
    return model


def _tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names of parameters that are one tensor (e.g. lm_head.weight and backbone.embedding.weight)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _fill_tied(model: torch.nn.Module, state: dict) -> dict:
    """A tied tensor stored once (safetensors, transformers) stands for all its names."""
    state = dict(state)
    for names in _tied_groups(model):
        present = [n for n in names if n in state]
        for name in names:
            if present and name not in state:
                state[name] = state[present[0]]
    return state


def _mismatches(model: torch.nn.Module, state: dict) -> list[str]:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
                 for k in expected if k in state and state[k].shape != expected[k].shape]
    not_float = [f"{k} ({state[k].dtype})" for k in expected
                 if k in state and expected[k].is_floating_point() and not state[k].is_floating_point()]
    problems = [("missing tensors", missing), ("unexpected tensors", unexpected),
                ("mis-shaped tensors", misshaped), ("non-floating tensors", not_float)]
    return [f"{what}: {', '.join(items)}" for what, items in problems if items]


def load_checkpoint_into(model: torch.nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Copy state into model (cast to each parameter's dtype and device) after checking all of it."""
    state = _fill_tied(model, state)
    problems = _mismatches(model, state)
    if problems:
        raise CheckpointError(f"{source}: does not fit {type(model).__name__} (nothing was loaded); "
                              + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _config_dict(model) -> dict:
    config = model.config
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(vars(config))


def _state_once(model: torch.nn.Module) -> dict:
    """state_dict with each tied tensor under its first name only (safetensors refuses shared memory)."""
    state = model.state_dict()
    for names in _tied_groups(model):
        for name in names[1:]:
            state.pop(name, None)
    return state


def save_pretrained(model, save_directory, safe_serialization: bool = True, max_shard_size=None) -> None:
    """config.json (all MambaConfig fields) + model.safetensors (or pytorch_model.bin when
    safe_serialization=False, the mamba_ssm layout with both tied names); shards when max_shard_size
    (bytes or '200MB') is exceeded. Each file is written to a temporary name and renamed."""
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    if safe_serialization:
        written = write_safetensors(directory, _state_once(model), shard_size_bytes(max_shard_size))
    else:
        written = write_bin(directory, model.state_dict())
    remove_stale_weights(directory, keep=written)
    write_json(directory / CONFIG, _config_dict(model))


def save_hf(model, save_directory) -> None:
    """Write a transformers MambaForCausalLM / Mamba2ForCausalLM directory (config.json + model.safetensors)."""
    if getattr(model, "process_group", None) is not None:
        raise ValueError("model: save_hf takes a single-process model; save a tensor-parallel one with "
                         "save_pretrained (a full checkpoint) and convert that")
    directory = Path(save_directory)
    mixer = model.backbone.layers[0].mixer
    vocab_rows = model.backbone.embedding.weight.shape[0]
    config = hf_convert.config_to_hf(model.config, mixer, vocab_rows)
    directory.mkdir(parents=True, exist_ok=True)
    written = write_safetensors(directory, hf_convert.state_dict_to_hf(_state_once(model)))
    remove_stale_weights(directory, keep=written)
    write_json(directory / CONFIG, config)
