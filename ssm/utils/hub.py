"""Find a checkpoint directory: a local path, or a hub name in the Hugging Face cache (offline).

The cache layout is ``<cache>/models--<org>--<name>/snapshots/<commit>/`` with the commit of a
branch in ``refs/<branch>``. huggingface_hub is not needed; when it is installed and the name is
not cached (and HF_HUB_OFFLINE is not set), it downloads the snapshot.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

CHECKPOINT_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
                    "pytorch_model.bin.index.json"]


def hub_cache_dirs() -> list[Path]:
    """Hugging Face hub cache directories, most specific first (as huggingface_hub orders them)."""
    env = os.environ
    dirs = [env.get("HF_HUB_CACHE"), env.get("HUGGINGFACE_HUB_CACHE")]
    if env.get("HF_HOME"):
        dirs.append(os.path.join(env["HF_HOME"], "hub"))
    xdg = env.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    dirs.append(os.path.join(xdg, "huggingface", "hub"))
    return list(dict.fromkeys(Path(d).expanduser() for d in dirs if d))


def cached_snapshot(repo_id: str, revision: Optional[str] = None) -> Optional[Path]:
    """The snapshot directory of repo_id at revision (branch, tag or commit) in a local cache, or None."""
    revision = revision or "main"
    for cache in hub_cache_dirs():
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        ref = repo / "refs" / revision
        commit = ref.read_text().strip() if ref.is_file() else revision
        snapshot = repo / "snapshots" / commit
        if snapshot.is_dir():
            return snapshot
    return None


def resolve_checkpoint_dir(name_or_path, revision: Optional[str] = None) -> Path:
    """A local directory, else the cached (or, with huggingface_hub online, downloaded) snapshot."""
    path = Path(os.fspath(name_or_path)).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{name_or_path}: is a file; expected a checkpoint directory")
    snapshot = cached_snapshot(str(name_or_path), revision)
    if snapshot is None:
        snapshot = _download(str(name_or_path), revision)
    if snapshot is None:
        looked = ", ".join(str(d) for d in hub_cache_dirs())
        raise FileNotFoundError(f"{name_or_path}: no such directory, and not in the Hugging Face cache "
                                f"(looked in {looked})")
    return snapshot


def _download(repo_id: str, revision: Optional[str]) -> Optional[Path]:
    """Download through huggingface_hub when it is installed and downloads are allowed, else None."""
    looks_like_path = repo_id.startswith(("/", ".", "~")) or os.sep != "/" and os.sep in repo_id
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or repo_id.count("/") != 1 \
            or looks_like_path:
        return None
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=CHECKPOINT_FILES))
    except Exception as error:  # network, authentication or unknown repository: report as not found
        raise FileNotFoundError(f"{repo_id}: not in the Hugging Face cache and the download failed "
                                f"({error})") from error
