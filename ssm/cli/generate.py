"""``ssm generate``: sample text from a model (default: the built-in byte-level model), streaming it to
the terminal; the last line gives prompt and generation tokens/s, the backend and the device."""
from __future__ import annotations

import argparse
import sys

import torch

from ssm.cli.common import load_model, pick_device, pick_dtype
from ssm.cli.data import CliError
from ssm.cli.streamer import TextStreamer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint directory or Hugging Face cache name (default: built-in)")
    p.add_argument("--prompt", help="the prompt (default: read from stdin)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: all; 1: greedy)")
    p.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling (0 or 1: off)")
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    p.add_argument("--batch", type=int, default=1, help="samples of the prompt (the first is streamed)")
    p.add_argument("--tokenizer", help="a Hugging Face tokenizer.json (default: the checkpoint's, else bytes)")


def read_prompt(args) -> str:
    if args.prompt is not None:
        prompt = args.prompt
    elif not sys.stdin.isatty():
        prompt = sys.stdin.read()
    else:
        raise CliError("no prompt: pass --prompt TEXT or pipe text to stdin")
    if not prompt:
        raise CliError("the prompt is empty")
    return prompt


def check(args) -> None:
    if args.max_new_tokens < 1 or args.batch < 1:
        raise CliError("--max-new-tokens and --batch must be at least 1")
    if args.temperature <= 0:
        raise CliError(f"--temperature must be > 0 (use --top-k 1 for greedy), got {args.temperature}")


def run(args) -> int:
    from ssm.utils.dispatch import get_available_backend
    check(args)
    prompt = read_prompt(args)
    device = pick_device(args.device)
    model, tokenizer, _ = load_model(args.model, device, pick_dtype(args.dtype), args.tokenizer)
    torch.manual_seed(args.seed)
    # ids (batch, P)
    ids = tokenizer.encode(prompt)[None].repeat(args.batch, 1).to(device)
    streamer = TextStreamer(tokenizer)
    sys.stdout.write(prompt)
    out = model.generate(ids, max_length=ids.shape[1] + args.max_new_tokens, top_k=args.top_k, top_p=args.top_p,
                         min_p=args.min_p, temperature=args.temperature, repetition_penalty=args.repetition_penalty,
                         eos_token_id=tokenizer.eos_token_id, vocab_size=tokenizer.vocab_size,
                         cg=device.type == "cuda", streamer=streamer)
    for row in range(1, args.batch):
        text = tokenizer.token_bytes(out[row, ids.shape[1]:]).decode("utf-8", errors="replace")
        print(f"\n--- sample {row + 1} ---\n{prompt}{text}", end="")
    prompt_rate, gen_rate = streamer.rates(ids.shape[1], args.batch)
    print(f"\nprompt {prompt_rate:.1f} tok/s, generation {gen_rate:.1f} tok/s, "
          f"backend {get_available_backend(device)}, device {device}")
    return 0
