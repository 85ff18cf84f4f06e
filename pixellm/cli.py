"""`pixellm` console script (also `python -m pixellm`). Each subcommand lives with its concept:
its module defines `register(subparsers)` and the function it dispatches to.

Building the parser imports only light modules (argparse, stdlib, light pixellm modules): torch,
transformers, deepspeed, numpy/scipy stacks are imported inside the functions a subcommand runs,
so `pixellm --help`, `pixellm CMD --help` and cheap commands such as `validate-data` start fast
(tests/test_cli_startup.py checks this)."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module whose `register(subparsers)` adds it, or "module:function" naming another
# registration function. Each must be light to import (see the module docstring).
COMMANDS = {
    "validate-data": "pixellm.data.validate",
    "make-synthetic": "pixellm.data.synthetic",
    "score": "pixellm.evaluation.score",
    "chat": "pixellm.chat",
    "export": "pixellm.export",
    "plan-memory": "pixellm.memory_plan",
    "probe-grounding": "pixellm.grounding.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixellm", description="PixelLM pixel-reasoning LMM tools")
    sub = parser.add_subparsers(dest="command", required=True)
    for target in dict.fromkeys(COMMANDS.values()):
        module, _, function = target.partition(":")
        getattr(importlib.import_module(module), function or "register")(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
