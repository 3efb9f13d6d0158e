"""Text data for training and evaluation: collect files, split them deterministically into train and
held-out sets by a hash of their path, and turn them into one token stream."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

SEPARATOR = b"\n"


class CliError(Exception):
    """A user error: printed as one line by ``ssm``, exit status 1."""


def collect_files(paths, suffixes=(), exclude=()) -> list[tuple[Path, str]]:
    """(file, key) for every file under paths, sorted by key; key is the path relative to the folder
    given (the file name for a file given directly), so the split does not depend on where data lives."""
    found = []
    for given in paths:
        root = Path(given).expanduser()
        if root.is_file():
            found.append((root, root.name))
        elif root.is_dir():
            found += [(p, p.relative_to(root).as_posix()) for p in root.rglob("*")
                      if p.is_file() and _wanted(p.relative_to(root), suffixes, exclude)]
        else:
            raise CliError(f"{given}: no such file or directory")
    if not found:
        raise CliError(f"no input files under {', '.join(map(str, paths))} (suffixes {list(suffixes) or 'any'})")
    return sorted(found, key=lambda item: item[1])


def _wanted(relative: Path, suffixes, exclude) -> bool:
    if suffixes and relative.suffix not in suffixes:
        return False
    return not any(part in exclude for part in relative.parts)


def is_heldout(key: str, fraction: float) -> bool:
    """A file is held out when the first 8 bytes of sha256(key), as a fraction of 2^64, are < fraction."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction


def read_bytes(files) -> bytes:
    return SEPARATOR.join(path.read_bytes() for path, _ in files)


def split_streams(files, heldout: float) -> tuple[bytes, bytes]:
    """(train bytes, held-out bytes). With one side empty by the file split (e.g. a single file),
    the last `heldout` fraction of the joined text is held out instead."""
    train = [f for f in files if not is_heldout(f[1], heldout)]
    held = [f for f in files if is_heldout(f[1], heldout)]
    if train and (held or heldout == 0):
        return read_bytes(train), read_bytes(held)
    text = read_bytes(files)
    cut = int(len(text) * (1 - heldout))
    return text[:cut], text[cut:]


def select(files, split: str, heldout: float):
    """The files of one split: 'all', 'train' or 'heldout'."""
    if split == "all":
        return files
    keep = split == "heldout"
    return [f for f in files if is_heldout(f[1], heldout) == keep]


class ByteTokenizer:
    """Bytes are tokens 0..255; decoding of a partial UTF-8 sequence waits for the rest."""

    vocab_size = 256
    eos_token_id = None

    def encode(self, data) -> torch.Tensor:
        data = data.encode() if isinstance(data, str) else data
        return torch.from_numpy(np.frombuffer(bytearray(data), dtype=np.uint8).astype(np.int64))

    def token_bytes(self, ids) -> bytes:
        return bytes(int(i) & 0xFF for i in ids)


class HFTokenizer:
    """A Hugging Face tokenizer.json through the `tokenizers` package."""

    def __init__(self, path):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise CliError("--tokenizer needs the `tokenizers` package (pip install tokenizers)") from None
        if not Path(path).is_file():
            raise CliError(f"{path}: tokenizer file not found")
        self.path = str(path)
        self.tok = Tokenizer.from_file(self.path)
        self.vocab_size = self.tok.get_vocab_size()
        self.eos_token_id = None

    def encode(self, data) -> torch.Tensor:
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
        return torch.tensor(self.tok.encode(text, add_special_tokens=False).ids, dtype=torch.long)

    def token_bytes(self, ids) -> bytes:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False).encode()


def make_tokenizer(path=None):
    return HFTokenizer(path) if path else ByteTokenizer()


def encode_stream(tokenizer, data: bytes) -> torch.Tensor:
    """The whole text as one 1-d token tensor (uint8 for bytes, to keep big corpora small)."""
    if isinstance(tokenizer, ByteTokenizer):
        return torch.from_numpy(np.frombuffer(bytearray(data), dtype=np.uint8))
    return tokenizer.encode(data)


def sample_batch(stream: torch.Tensor, batch: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, seq_len + 1) long windows at random offsets of stream."""
    if stream.numel() < seq_len + 2:
        raise CliError(f"training text has {stream.numel()} tokens; --seq-len {seq_len} needs at least {seq_len + 2}")
    starts = torch.randint(0, stream.numel() - seq_len - 1, (batch,), generator=generator)
    # idx (batch, seq_len + 1)
    idx = starts[:, None] + torch.arange(seq_len + 1)
    return stream[idx].long()


def eval_windows(stream: torch.Tensor, seq_len: int, batch: int, max_tokens: int = 0):
    """Batches (b, <= seq_len + 1) of windows overlapping by one token: each token after the first
    is predicted exactly once. max_tokens > 0 keeps only the first max_tokens of the stream."""
    if max_tokens > 0:
        stream = stream[:max_tokens]
    starts = list(range(0, max(stream.numel() - 1, 0), seq_len))
    for i in range(0, len(starts), batch):
        rows = [stream[s:s + seq_len + 1].long() for s in starts[i:i + batch]]
        width = max(r.numel() for r in rows)
        # pad short rows with -100 targets (ignored by the loss)
        out = torch.full((len(rows), width), -100, dtype=torch.long)
        for j, r in enumerate(rows):
            out[j, :r.numel()] = r
        yield out

