"""``ssm eval``: the loss of a model on text files. Byte-level models print ``bits_per_byte=<float>``
as the last line; tokenized models print per-token loss and perplexity."""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from ssm.cli.common import lm_loss, load_model, pick_device, pick_dtype
from ssm.cli.data import ByteTokenizer, CliError, collect_files, encode_stream, eval_windows, read_bytes, select


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint directory or Hugging Face cache name (default: built-in)")
    p.add_argument("--data", nargs="+", required=True, help="text files or folders")
    p.add_argument("--suffix", nargs="*", default=[], help="only files with these suffixes")
    p.add_argument("--exclude", nargs="*", default=[], help="skip files with a path part among these names")
    p.add_argument("--split", choices=["all", "train", "heldout"], default="all",
                   help="which files: all, or one side of the path-hash split of `ssm train`")
    p.add_argument("--heldout", type=float, default=0.05, help="held-out fraction of that split")
    p.add_argument("--seq-len", type=int, default=512, help="window length (each window starts fresh)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=0, help="evaluate only the first N tokens (0: all)")
    p.add_argument("--tokenizer", help="a Hugging Face tokenizer.json (default: the checkpoint's, else bytes)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")


@torch.no_grad()
def mean_loss(model, stream: torch.Tensor, seq_len: int, batch: int, device, max_tokens: int = 0) -> float:
    """Mean next-token cross entropy (nats) over stream, in windows overlapping by one token."""
    model.eval()
    total, count = 0.0, 0
    for tokens in eval_windows(stream, seq_len, batch, max_tokens):
        tokens = tokens.to(device)
        total += lm_loss(model, tokens, reduction="sum").item()
        count += int((tokens[:, 1:] != -100).sum())
    return total / max(count, 1)


def run(args) -> int:
    device = pick_device(args.device)
    model, tokenizer, directory = load_model(args.model, device, pick_dtype(args.dtype), args.tokenizer)
    files = select(collect_files(args.data, tuple(args.suffix), tuple(args.exclude)), args.split, args.heldout)
    if not files:
        raise CliError(f"no files in the {args.split!r} split of {', '.join(args.data)}")
    stream = encode_stream(tokenizer, read_bytes(files))
    start = time.perf_counter()
    nats = mean_loss(model, stream, args.seq_len, args.batch_size, device, args.max_tokens)
    n = min(stream.numel(), args.max_tokens or stream.numel()) - 1
    print(f"model {directory}: {len(files)} files, {n} predicted tokens, {time.perf_counter() - start:.1f}s",
          file=sys.stderr)
    if isinstance(tokenizer, ByteTokenizer):
        print(f"bits_per_byte={nats / math.log(2):.4f}")
    else:
        print(f"loss={nats:.4f} perplexity={math.exp(nats):.3f}")
    return 0
