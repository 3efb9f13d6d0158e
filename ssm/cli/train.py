"""``ssm train``: train a MambaLMHeadModel on local text files (byte-level or with a tokenizer).

AdamW, linear warmup then cosine decay, gradient clipping, gradient accumulation, bf16 autocast on a
GPU, periodic held-out evaluation, checkpoints (save_pretrained + train_state.pt) resumable with --resume.
Under ``torchrun --nproc-per-node N``: data parallel (DDP, or FSDP2 with --fsdp); --batch-size is the
global batch, each rank takes its rows of the same sampled batch (ssm.cli.distributed).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

from ssm.cli import distributed
from ssm.cli.common import TOKENIZER_FILE, lm_loss, pick_device
from ssm.cli.data import CliError, collect_files, encode_stream, make_tokenizer, sample_batch, split_streams
from ssm.cli.evaluate import mean_loss

STATE_FILE = "train_state.pt"
ARGS_FILE = "train_args.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", required=True, help="text files or folders")
    p.add_argument("--out", required=True, help="checkpoint directory (created)")
    p.add_argument("--suffix", nargs="*", default=[], help="only files with these suffixes, e.g. .py .txt")
    p.add_argument("--exclude", nargs="*", default=[], help="skip files with a path part among these names")
    p.add_argument("--heldout", type=float, default=0.05, help="fraction of files held out (by path hash)")
    p.add_argument("--tokenizer", help="a Hugging Face tokenizer.json (default: bytes, vocabulary 256)")
    p.add_argument("--config", help="a JSON file of MambaConfig fields (overrides the model flags)")
    p.add_argument("--layer", choices=["mamba1", "mamba2"], default="mamba2")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--d-state", type=int, default=None, help="default 16 (Mamba-1) / 64 (Mamba-2)")
    p.add_argument("--headdim", type=int, default=32, help="Mamba-2 head dimension")
    p.add_argument("--expand", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=64, help="Mamba-2 chunk size")
    p.add_argument("--d-intermediate", type=int, default=0, help="gated MLP width (0: none)")
    p.add_argument("--attn-layers", type=int, nargs="*", default=[], help="indices of attention layers (hybrid)")
    p.add_argument("--attn-heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps in total")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr as a fraction of --lr")
    p.add_argument("--warmup", type=int, default=50, help="warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=200, help="steps between held-out evaluations (0: never)")
    p.add_argument("--eval-tokens", type=int, default=65536, help="held-out tokens per evaluation")
    p.add_argument("--save-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP2 (fully_shard per block) instead of DDP")


def model_config(args):
    """MambaConfig from --config, else from the flags."""
    from ssm.models.config import MambaConfig
    from ssm.utils.weights import config_from_dict
    vocab = 256 if not args.tokenizer else make_tokenizer(args.tokenizer).vocab_size
    if args.config:
        try:
            fields = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as error:
            raise CliError(f"--config {args.config}: {error}") from None
        return config_from_dict({"vocab_size": vocab, **fields})
    ssm_cfg = {"layer": "Mamba2" if args.layer == "mamba2" else "Mamba1", "expand": args.expand,
               "d_state": args.d_state or (64 if args.layer == "mamba2" else 16)}
    if args.layer == "mamba2":
        ssm_cfg.update(headdim=args.headdim, chunk_size=args.chunk_size)
    attn_cfg = {"num_heads": args.attn_heads, "causal": True} if args.attn_layers else {}
    return MambaConfig(d_model=args.d_model, n_layer=args.n_layer, vocab_size=vocab, ssm_cfg=ssm_cfg,
                       d_intermediate=args.d_intermediate, attn_layer_idx=list(args.attn_layers),
                       attn_cfg=attn_cfg)


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warmup to 1, then cosine decay to min_ratio at step `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def make_optimizer(model, args):
    """AdamW; no weight decay on biases, norms, embeddings and SSM parameters (A_log, D, dt_bias)."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embedding" not in name else plain).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args.warmup, args.steps, args.min_lr_ratio))
    return opt, sched


class Progress:
    """One line per --log-every steps: step, loss, lr, tokens/s, ETA (rewritten in place on a terminal)."""

    def __init__(self, total: int, start_step: int, tokens_per_step: int):
        self.total, self.tokens_per_step, self.tty = total, tokens_per_step, sys.stderr.isatty()
        self.start_step, self.start = start_step, time.perf_counter()

    def show(self, step: int, loss: float, lr: float) -> None:
        elapsed = time.perf_counter() - self.start
        rate = (step - self.start_step) / max(elapsed, 1e-9)
        eta = (self.total - step) / max(rate, 1e-9)
        line = (f"step {step}/{self.total} loss {loss:.4f} lr {lr:.2e} "
                f"{rate * self.tokens_per_step:.0f} tok/s elapsed {_hms(elapsed)} eta {_hms(eta)}")
        print(("\r" + line + "\033[K") if self.tty else line, end="" if self.tty else "\n", file=sys.stderr,
              flush=True)

    def note(self, text: str) -> None:
        print(("\n" if self.tty else "") + text, file=sys.stderr, flush=True)


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def save_checkpoint(model, opt, sched, step: int, out: Path, generator: torch.Generator, ctx) -> None:
    """save_pretrained + train_state.pt (optimizer keyed by parameter names, scheduler, step, sampling
    RNG), each renamed into place; one checkpoint, written by rank 0."""
    distributed.save_model(model, out, ctx)
    state = {"step": step, "optimizer": distributed.optimizer_state(model, opt), "scheduler": sched.state_dict(),
             "generator": generator.get_state()}
    if not ctx.main:
        return
    tmp = out / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out / STATE_FILE)


def prepare(args, verbose: bool = True):
    """(train stream, held-out stream, tokenizer) of --data."""
    tokenizer = make_tokenizer(args.tokenizer)
    files = collect_files(args.data, tuple(args.suffix), tuple(args.exclude))
    train, held = split_streams(files, args.heldout)
    if verbose:
        print(f"data: {len(files)} files, {len(train)} train bytes, {len(held)} held-out bytes", file=sys.stderr)
    return encode_stream(tokenizer, train), encode_stream(tokenizer, held), tokenizer


def build(args, device, ctx):
    """(model wrapped for data parallelism, optimizer, scheduler, start step, sampling generator):
    fresh, or from --out with --resume."""
    from ssm.models.lm import MambaLMHeadModel
    out = Path(args.out)
    generator = torch.Generator().manual_seed(args.seed)
    if args.resume:
        if not (out / STATE_FILE).is_file():
            raise CliError(f"--resume: {out / STATE_FILE} not found (no checkpoint to resume)")
        model = distributed.wrap(MambaLMHeadModel.from_pretrained(out, device=device), ctx, device)
        opt, sched = make_optimizer(model, args)
        state = torch.load(out / STATE_FILE, map_location=device, weights_only=True)
        distributed.load_optimizer_state(model, opt, state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"].cpu())
        return model, opt, sched, state["step"], generator
    torch.manual_seed(args.seed)
    model = distributed.wrap(MambaLMHeadModel(model_config(args), device=device), ctx, device)
    opt, sched = make_optimizer(model, args)
    return model, opt, sched, 0, generator


def train_step(model, opt, sched, stream, args, device, generator, ctx) -> float:
    """One optimizer step over --grad-accum micro-batches; returns the mean loss (over all ranks)."""
    total = 0.0
    for _ in range(args.grad_accum):
        tokens = distributed.local_rows(sample_batch(stream, args.batch_size, args.seq_len, generator), ctx)
        tokens = tokens.to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = lm_loss(model, tokens) / args.grad_accum
        loss.backward()
        total += loss.item()
    if args.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return distributed.mean(total, ctx, device)


def write_run_files(args, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / ARGS_FILE).write_text(json.dumps({"argv": sys.argv, **vars(args)}, indent=2) + "\n")
    if args.tokenizer:
        shutil.copyfile(args.tokenizer, out / TOKENIZER_FILE)


def run(args) -> int:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.fsdp and not distributed.launched():
        raise CliError("--fsdp: run under torchrun (e.g. torchrun --nproc-per-node 2 -m ssm train ...)")
    ctx, device = distributed.setup(pick_device(args.device), args.fsdp)
    try:
        return _train(args, ctx, device)
    finally:
        distributed.teardown(ctx)


def _train(args, ctx, device) -> int:
    if args.batch_size % ctx.world:
        raise CliError(f"--batch-size {args.batch_size}: the global batch must divide evenly over {ctx.world} ranks")
    train, held, _ = prepare(args, verbose=ctx.main)
    model, opt, sched, step, generator = build(args, device, ctx)
    out = Path(args.out)
    if ctx.main:
        write_run_files(args, out)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model: {n_params / 1e6:.2f}M parameters, {distributed.unwrap(model).config}"
              + (f", {ctx.world} ranks ({'FSDP2' if ctx.fsdp else 'DDP'})" if ctx.distributed else ""),
              file=sys.stderr)
    progress = Progress(args.steps, step, args.batch_size * args.seq_len * args.grad_accum)
    model.train()
    while step < args.steps:
        loss = train_step(model, opt, sched, train, args, device, generator, ctx)
        step += 1
        if ctx.main and (step % args.log_every == 0 or step == args.steps):
            progress.show(step, loss, sched.get_last_lr()[0])
        if args.eval_every and (step % args.eval_every == 0 or step == args.steps) and held.numel() > 1:
            # every rank evaluates (FSDP2 needs all of them for its all-gathers)
            nats = mean_loss(distributed.unwrap(model), held, args.seq_len, args.batch_size, device,
                             args.eval_tokens)
            if ctx.main:
                progress.note(f"eval step {step}: held-out loss {nats:.4f} nats/token ({nats / math.log(2):.4f} bits)")
            model.train()
        if step % args.save_every == 0 or step == args.steps:
            save_checkpoint(model, opt, sched, step, out, generator, ctx)
    if ctx.main:
        progress.note(f"saved {out}")
    return 0
