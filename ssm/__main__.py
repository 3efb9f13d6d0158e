"""``python -m ssm`` / ``ssm``: generate, train, eval, bench. Errors print one line and exit 1
(set SSM_DEBUG=1 for the traceback); bad flags exit 2."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {
    "generate": ("ssm.cli.generate", "generate text with a model (default: the built-in one)"),
    "train": ("ssm.cli.train", "train a Mamba language model on local text"),
    "eval": ("ssm.cli.evaluate", "loss of a model on text files (bits per byte)"),
    "bench": ("ssm.cli.bench", "run the benchmarks under benchmarks/"),
}


class _Parser(argparse.ArgumentParser):
    """Bad flags: one line (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ssm", description="Selective state-space models: command line")
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(sp)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return importlib.import_module(COMMANDS[args.command][0]).run(args)
    except KeyboardInterrupt:
        print(f"ssm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if os.environ.get("SSM_DEBUG"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"ssm {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
