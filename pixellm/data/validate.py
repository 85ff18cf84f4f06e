"""`pixellm validate-data {muse,refer,grefcoco,reasonseg,custom} ...`: report every bad record, never crash.

Prints one line per problem (`file: where: reason`; `warning: file: where: reason` for a record
that is usable but probably not what was meant: an empty answer, an empty mask) to stdout, then a
summary line (`N records checked, M problems found, K warnings`). Exit status 0 when no problem
(warnings allowed), 1 with problems, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import DataError, Problem

FORMATS = ("muse", "refer", "grefcoco", "reasonseg", "custom")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `validate-data` subcommand to the `pixellm` parser."""
    p = subparsers.add_parser(
        "validate-data", help="check a dataset and report every bad record",
        description="Check a dataset (keys, types, masks, <seg> counts, images) and report every problem.",
    )
    p.add_argument("format", choices=FORMATS)
    p.add_argument("--annotations", type=Path, help="annotation file (muse, custom)")
    p.add_argument("--image-root", type=Path, help="image folder (muse, custom; optional for refer, grefcoco)")
    p.add_argument("--root", type=Path, help="REFER root holding <name>/ (refer, grefcoco); the folder holding "
                   "train/ val/ test/ (reasonseg)")
    p.add_argument("--name", help="dataset folder under --root (default: refcoco, or grefcoco)")
    p.add_argument("--split-by", default="unc", help="refs(<split-by>).p / grefs(<split-by>).json (default: unc)")
    p.add_argument("--split", help="only check refs of this split (refer, grefcoco; default: all); the split "
                   "folder (reasonseg; default: val)")
    p.add_argument("--config", type=Path, metavar="YAML",
                   help="also print the prompt+answer token lengths under this training config's tokenizer "
                        "and template, and how many answers its data.max_length would cut")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override of --config (e.g. data.max_length=2048; repeatable)")
    p.set_defaults(func=run)


def _count_lines(path: Path) -> int:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def _check(args: argparse.Namespace) -> tuple[int, list[Problem]]:
    """(records checked, problems) for the chosen format; may raise DataError/OSError/ValueError."""
    if args.format == "muse":
        from .muse import check_muse

        return check_muse(args.annotations, args.image_root, progress=True)
    if args.format == "custom":
        from .custom import validate_custom  # written alongside; imported only when asked for

        return _count_lines(args.annotations), list(validate_custom(args.annotations, args.image_root))
    if args.format == "reasonseg":
        from .reasonseg import check_reasonseg

        return check_reasonseg(args.root, args.split or "val")
    if args.format == "refer":
        from .refer import check_refer

        return check_refer(args.root, args.name or "refcoco", args.split_by, args.image_root, args.split, True)
    from .grefcoco import check_grefcoco

    return check_grefcoco(args.root, args.name or "grefcoco", args.split_by, args.image_root, args.split, True)


def _usage_error(args: argparse.Namespace) -> str | None:
    if args.format in ("muse", "custom") and (args.annotations is None or args.image_root is None):
        return f"validate-data {args.format} needs --annotations FILE and --image-root DIR"
    if args.format in ("refer", "grefcoco", "reasonseg") and args.root is None:
        return f"validate-data {args.format} needs --root DIR" + ("" if args.format == "reasonseg" else " (and --name, --split-by)")
    return None


def _target(args: argparse.Namespace) -> str:
    """What the run is about, for problems that are not tied to one record."""
    return str(args.annotations if args.format in ("muse", "custom") else args.root)


def _records(args: argparse.Namespace) -> list:
    """The usable records of the dataset (bad ones left out), as training reads them."""
    skipped: list = []
    if args.format == "muse":
        from .muse import load_muse

        return load_muse(args.annotations, args.image_root, skipped=skipped)
    if args.format == "custom":
        from .custom import load_custom

        return load_custom(args.annotations, args.image_root, skipped=skipped)
    if args.format == "reasonseg":
        from .reasonseg import load_reasonseg

        return load_reasonseg(args.root, args.split or "val", skipped=skipped)
    image_root = args.image_root
    if args.format == "refer":
        from .refer import load_refer

        return load_refer(args.root, args.name or "refcoco", args.split_by, args.split or "train",
                          image_root=image_root, mode="train")
    from .grefcoco import load_grefcoco

    return load_grefcoco(args.root, args.name or "grefcoco", args.split_by, args.split or "train", image_root=image_root)


def _lengths(args: argparse.Namespace) -> str:
    """The token-length line for --config (never a traceback: a problem is reported in the line)."""
    try:
        from ..build import text_processor
        from ..config import load_config
        from .lengths import format_lengths, token_lengths

        processor = text_processor(load_config(args.config, args.set))
        return format_lengths(token_lengths(_records(args), processor))
    except (DataError, OSError, ValueError) as e:
        return f"token lengths: not computed: {type(e).__name__}: {e}"


def run(args: argparse.Namespace) -> int:
    """Validate, print problems and a summary; 0 without problems (warnings allowed), 1 with
    problems, 2 on bad usage."""
    usage = _usage_error(args)
    if usage:
        print(f"pixellm: error: {usage}", file=sys.stderr)
        return 2
    try:
        checked, problems = _check(args)
    except DataError as e:
        checked, problems = 0, [e.problem or Problem(_target(args), "-", str(e))]
    except (OSError, ValueError) as e:
        checked, problems = 0, [Problem(_target(args), "-", f"{type(e).__name__}: {e}")]
    except Exception as e:  # last guard: the validator reports, it never shows a traceback
        checked, problems = 0, [Problem(_target(args), "-", f"internal error {type(e).__name__}: {e}")]
    for problem in problems:
        print(problem)
    if args.config is not None:
        print(_lengths(args))
    errors = [p for p in problems if not p.warning]
    print(f"{checked} records checked, {len(errors)} problems found, {len(problems) - len(errors)} warnings")
    return 1 if errors else 0
