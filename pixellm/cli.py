"""`pixellm` console script (also `python -m pixellm`). Each subcommand lives with its concept:
its module defines `register(subparsers)` and the function it dispatches to."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module that registers it
COMMANDS = {
    "validate-data": "pixellm.data.validate",
    "make-synthetic": "pixellm.data.synthetic",
    "score": "pixellm.evaluation.score",
    "chat": "pixellm.chat",
    "export": "pixellm.export",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixellm", description="PixelLM pixel-reasoning LMM tools")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
