"""Shared pieces of the subcommands: the built-in model, devices and dtypes, loading a model with its
tokenizer, and the loss of a batch."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ssm.cli.data import ByteTokenizer, CliError, HFTokenizer

BUILTIN = Path(__file__).resolve().parent.parent / "data" / "builtin"
TOKENIZER_FILE = "tokenizer.json"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def pick_device(name: str | None) -> torch.device:
    """--device: 'cuda' when a GPU is present and nothing was asked, else 'cpu'."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise CliError(f"--device {name}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name}: no CUDA GPU is available")
    return device


def pick_dtype(name: str | None) -> torch.dtype:
    if name is None:
        return torch.float32
    if name not in DTYPES:
        raise CliError(f"--dtype {name}: expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def model_tokenizer(model_dir: Path, vocab_size: int, tokenizer_path=None):
    """--tokenizer, else the checkpoint's tokenizer.json, else bytes (a vocabulary of 256)."""
    path = tokenizer_path or (model_dir / TOKENIZER_FILE if (model_dir / TOKENIZER_FILE).is_file() else None)
    if path is not None:
        return HFTokenizer(path)
    if vocab_size > 256:
        raise CliError(f"{model_dir}: vocabulary of {vocab_size} tokens and no {TOKENIZER_FILE}; "
                       "pass --tokenizer PATH/tokenizer.json")
    return ByteTokenizer()


def load_model(name, device: torch.device, dtype: torch.dtype, tokenizer_path=None):
    """(model in eval mode, tokenizer, checkpoint directory) for --model (default: the built-in model)."""
    from ssm.models.lm import MambaLMHeadModel
    from ssm.utils.hub import resolve_checkpoint_dir
    directory = resolve_checkpoint_dir(name or BUILTIN)
    model = MambaLMHeadModel.from_pretrained(directory, device=device, dtype=dtype)
    tokenizer = model_tokenizer(Path(directory), model.config.vocab_size, tokenizer_path)
    return model.eval(), tokenizer, Path(directory)


def lm_loss(model, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross entropy (nats) of tokens (b, L + 1); targets of -100 are ignored."""
    # inputs, targets (b, L)
    inputs, targets = tokens[:, :-1].clamp(min=0), tokens[:, 1:]
    logits = model(inputs).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-100, reduction=reduction)
