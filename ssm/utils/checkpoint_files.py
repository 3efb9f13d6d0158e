"""Read and write the files of a checkpoint directory.

Weights: ``model.safetensors``, sharded safetensors (``model.safetensors.index.json``),
``pytorch_model.bin`` (``torch.load(weights_only=True)``) or sharded bin
(``pytorch_model.bin.index.json``), preferred in that order. Every file is written to a temporary
name in the same directory and renamed into place, so a crash never leaves a half-written file.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
CONFIG = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: unreadable files, or tensors that do not fit the model."""


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (a checkpoint directory needs {path.name})")
    try:
        return json.loads(path.read_text(), object_hook=_decode_special_floats)
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from error


def _decode_special_floats(obj: dict):
    # transformers >= 5 writes inf/nan as {"__float__": "Infinity"}
    if len(obj) == 1 and "__float__" in obj:
        return float(obj["__float__"])
    return obj


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint in ``directory``, on the CPU, in their stored dtypes."""
    if (directory / SAFETENSORS).is_file():
        return _read_safetensors(directory / SAFETENSORS)
    if (directory / SAFETENSORS_INDEX).is_file():
        return _read_sharded(directory / SAFETENSORS_INDEX, _read_safetensors)
    if (directory / BIN).is_file():
        return _read_bin(directory / BIN)
    if (directory / BIN_INDEX).is_file():
        return _read_sharded(directory / BIN_INDEX, _read_bin)
    raise FileNotFoundError(f"{directory}: no weights file (looked for {SAFETENSORS}, {SAFETENSORS_INDEX}, "
                            f"{BIN}, {BIN_INDEX})")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:
        raise CheckpointError(f"{path}: unreadable or corrupt safetensors file ({error})") from error


def _read_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: unreadable or corrupt PyTorch file ({error})") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state_dict), got {type(state).__name__}")
    return dict(state)


def _read_sharded(index_path: Path, read_one: Callable) -> dict[str, torch.Tensor]:
    """Read every shard named by the index; each key must be in the shard the index names."""
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: no 'weight_map' object")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if not (index_path.parent / shard).is_file():
            raise CheckpointError(f"{index_path}: shard {shard} is missing")
        state.update(read_one(index_path.parent / shard))
    absent = sorted(k for k, shard in weight_map.items() if k not in state)
    if absent:
        raise CheckpointError(f"{index_path}: tensors listed in the index but absent from their shards: {absent}")
    return state


def write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) on a temporary file next to path, then rename it to path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: dict) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=4)
    write_atomically(path, write)


def write_safetensors(directory: Path, state: dict[str, torch.Tensor], max_shard_size: int | None = None) -> list[str]:
    """model.safetensors, or shards + index when the tensors exceed max_shard_size bytes; the file names."""
    from safetensors.torch import save_file
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    shards = _split_shards(state, max_shard_size)
    if len(shards) == 1:
        write_atomically(directory / SAFETENSORS, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        return [SAFETENSORS]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, keys in zip(names, shards):
        part = {k: state[k] for k in keys}
        write_atomically(directory / name, lambda tmp, part=part: save_file(part, tmp, metadata={"format": "pt"}))
    total = sum(v.numel() * v.element_size() for v in state.values())
    weight_map = {k: name for name, keys in zip(names, shards) for k in keys}
    write_json(directory / SAFETENSORS_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return names + [SAFETENSORS_INDEX]


def _split_shards(state: dict[str, torch.Tensor], max_shard_size: int | None) -> list[list[str]]:
    """Keys in order, cut into consecutive groups of at most max_shard_size bytes (one tensor may exceed)."""
    if max_shard_size is None:
        return [list(state)]
    shards: list[list[str]] = [[]]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    return shards


def write_bin(directory: Path, state: dict[str, torch.Tensor]) -> list[str]:
    state = {k: v.detach().cpu() for k, v in state.items()}
    write_atomically(directory / BIN, lambda tmp: torch.save(state, tmp))
    return [BIN]


def remove_stale_weights(directory: Path, keep: list[str]) -> None:
    """Delete weight files of another format or sharding left by an earlier save (the loader would prefer them)."""
    for path in directory.iterdir():
        stale = path.name in (SAFETENSORS, SAFETENSORS_INDEX, BIN, BIN_INDEX) or (
            path.name.startswith("model-") and path.name.endswith(".safetensors"))
        if stale and path.name not in keep:
            path.unlink()


def shard_size_bytes(size) -> int | None:
    """max_shard_size as bytes: an int, or a string like '5GB' / '200MB' / '10KB'."""
    if size is None or isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    text = str(size).strip().upper()
    for unit, scale in units.items():
        if text.endswith(unit):
            return int(math.floor(float(text[: -len(unit)]) * scale))
    return int(text)
