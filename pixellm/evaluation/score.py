"""`pixellm score {muse,refer,grefcoco,reasonseg,custom,joint} ... --predictions P.jsonl`: score a
predictions file against a dataset split and print one JSON object (sorted keys) to stdout.

`score_predictions` is the one home of the scoring logic; evaluation code calls it directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pixellm.constants import SCORING_PROTOCOLS
from pixellm.data.errors import DataError, Problem

if TYPE_CHECKING:
    import numpy as np

    from pixellm.data.records import QARecord


def image_size(record: QARecord) -> tuple[int, int]:
    """(height, width) of the record's image: the stored size, else read from the image header."""
    if record.height is not None and record.width is not None:
        return int(record.height), int(record.width)
    from ..data.images import image_size as read_size

    return read_size(record.image_path)


def gt_masks(record: QARecord, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """The record's target masks decoded at full resolution (errors name the question)."""
    from pixellm.data.masks import MaskDecodeError, decode_mask

    h, w = size or image_size(record)
    try:
        return [decode_mask(spec, h, w, record.mask_root) for spec in record.masks]
    except MaskDecodeError as e:
        where = f"question {record.question_id}"
        raise DataError(Problem(str(record.image_path), where, f"ground-truth mask: {e}")) from None


def question_context(record: QARecord, size: tuple[int, int]) -> dict:
    """What a question adds to its masks for scoring: the GT's ignore pixels and the query kind
    (ReasonSeg: `extra["ignore"]`, `extra["is_sentence"]`); nothing for other sources."""
    from pixellm.data.masks import decode_mask

    context = {}
    if "ignore" in record.extra:
        context["ignore"] = decode_mask(record.extra["ignore"], *size)
    if "is_sentence" in record.extra:
        context["group"] = "long" if record.extra["is_sentence"] else "short"
    return context


def score_predictions(
    protocol: str, records: Sequence[QARecord], predictions: dict[str, dict], skipped: list[dict] | None = None,
    per: str | None = None,
) -> dict:
    """Score `predictions` ({question_id: predictions record}, as `read_predictions` returns)
    against the ground truth in `records` under `protocol` (see `metrics`).

    Questions are streamed (one question's masks in memory at a time) in record order. A
    question without a prediction scores as zero masks; predictions for question ids not in
    `records` are ignored with a warning (`num_ignored_predictions`). A question whose ground
    truth does not decode is left out of the scores and appended to `skipped` with the reason;
    `num_skipped` counts the questions skipped here or before (entries already in `skipped`).
    `per`: the averaging unit (`units`; default the protocol's); REFER records averaged per
    "instance" keep each object's first expression, and the predictions of its other
    expressions are left out (`num_unscored_expressions`). "joint" scores answers and grounding
    together (`joint.score_joint_predictions`).
    """
    from pixellm.data.images import ImageReadError
    from pixellm.data.skips import skip_entry

    from .metrics import Scorer, warn_ignored
    from .predictions import decode_prediction_masks
    from .units import DEFAULT_PER, check_per, select_unit

    per = per or DEFAULT_PER[protocol]
    check_per(protocol, per)
    if protocol == "joint":  # answers and grounding together
        from .joint import score_joint_predictions

        return score_joint_predictions(records, predictions, skipped=skipped)
    other: set[str] = set()
    if protocol == "refer":
        records, other = select_unit(records, per)
        predictions = {k: v for k, v in predictions.items() if k not in other}
    scorer = Scorer(protocol)
    seen: set[str] = set()
    skipped = [] if skipped is None else skipped
    unscored = {e["where"] for e in skipped}
    for record in records:
        qid = str(record.question_id)
        if qid in seen:
            raise ValueError(f"question_id {qid!r} occurs twice in the ground truth")
        seen.add(qid)
        try:
            size = image_size(record)
            gts = gt_masks(record, size)
        except (DataError, ImageReadError) as e:  # the ground truth itself is unusable: skip it
            skipped.append(skip_entry(e if isinstance(e, DataError) else str(e), source=record.source, stage="score",
                                      question_id=qid))
            unscored.add(f"question {qid}")
            continue
        pred = predictions.get(qid)
        pred_masks = None if pred is None else decode_prediction_masks(pred, *size)
        scorer.add(gts, pred_masks, **question_context(record, size))
    out = scorer.result()
    out["num_ignored_predictions"] = warn_ignored(set(predictions) - seen)
    out["num_skipped"] = len(unscored)
    out["per"] = per
    if per == "instance":
        out["num_unscored_expressions"] = len(other)
    return out


def load_records(args: argparse.Namespace) -> list[QARecord]:
    """The scored split's QARecords, from the loader of `args.protocol`."""
    if args.protocol == "muse":
        from pixellm.data.muse import load_muse

        return load_muse(Path(args.annotations), Path(args.image_root), args.split or "val")
    if args.protocol == "custom":
        from pixellm.data.custom import load_custom

        return load_custom(Path(args.annotations), Path(args.image_root))
    if args.protocol == "joint":
        from pixellm.data.joint import load_joint

        return load_joint(Path(args.annotations), Path(args.image_root))
    if args.protocol == "reasonseg":
        from pixellm.data.reasonseg import load_reasonseg

        return load_reasonseg(Path(args.root), args.split or "val", mode="eval", all_queries=args.all_queries)
    image_root = Path(args.image_root) if args.image_root else None
    if args.protocol == "refer":
        from pixellm.data.refer import load_refer

        return load_refer(Path(args.root), args.name, args.split_by, args.split or "val",
                          image_root=image_root, mode="eval")
    from pixellm.data.grefcoco import load_grefcoco

    return load_grefcoco(Path(args.root), args.name, args.split_by, args.split or "val",
                         image_root=image_root)


def _per(args: argparse.Namespace) -> str | None:
    """The averaging unit the flags ask for (None: the protocol's default)."""
    if args.protocol == "reasonseg":
        return "query" if args.all_queries else "image"
    if args.per is not None and args.protocol != "refer":
        args.score_parser.error(f"--per is for the refer protocol (RefCOCO/+/g, RefCLEF), not {args.protocol}")
    return args.per


def _missing_flags(args: argparse.Namespace) -> list[str]:
    if args.protocol in ("muse", "custom", "joint"):
        need = {"--annotations": args.annotations, "--image-root": args.image_root}
    elif args.protocol == "reasonseg":
        need = {"--root": args.root}
    else:
        need = {"--root": args.root, "--name": args.name, "--split-by": args.split_by}
    return [flag for flag, value in need.items() if not value]


def run(args: argparse.Namespace) -> int:
    """CLI entry: load, score, print one JSON object; data problems go to stderr (exit 1)."""
    missing = _missing_flags(args)
    if missing:
        args.score_parser.error(f"{args.protocol} needs {', '.join(missing)}")
    per = _per(args)
    try:
        from .predictions import read_predictions

        predictions = read_predictions(args.predictions)
        records = load_records(args)
        skipped: list[dict] = []
        result = score_predictions(args.protocol, records, predictions, skipped=skipped, per=per)
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for e in skipped:
        print(f"skipped: {e['file']}: {e['where']}: {e['reason']}", file=sys.stderr)
    if args.protocol not in ("custom", "joint"):  # a file, not a named split
        result["split"] = args.split or "val"
    print(json.dumps(result, sort_keys=True))
    return 0


def register(subparsers) -> None:
    """Add the `score` subcommand (light: what scoring needs is imported when it runs)."""
    p = subparsers.add_parser(
        "score",
        help="score a predictions file (gIoU, cIoU, box P@0.5, ...)",
        description="Score a predictions JSONL file against a dataset split; prints one JSON object.",
    )
    p.add_argument("protocol", choices=sorted(set(SCORING_PROTOCOLS)), help="dataset format and scoring protocol")
    p.add_argument("--predictions", required=True, metavar="P.jsonl", help="predictions file (JSON Lines)")
    p.add_argument("--annotations", metavar="FILE", help="annotation file (muse, custom, joint)")
    p.add_argument("--image-root", metavar="DIR", help="image folder (required for muse, custom, joint)")
    p.add_argument("--split", metavar="NAME", help="split to score (default: val; muse, refer, grefcoco, reasonseg)")
    p.add_argument("--root", metavar="DIR", help="REFER-layout data root (refer, grefcoco); the folder holding "
                   "train/ val/ test/ (reasonseg)")
    p.add_argument("--all-queries", action="store_true",
                   help="reasonseg: score every query of each image (default: the first, as LISA's validation)")
    p.add_argument("--per", choices=["expression", "instance"], default=None,
                   help="refer: average over every expression (default, as LISA/PixelLM) or over referred objects, "
                   "each by its first expression (as Seg-Zero/VisionReasoner)")
    p.add_argument("--name", metavar="NAME", help="dataset name, e.g. refcoco (refer, grefcoco)")
    p.add_argument("--split-by", metavar="NAME", help="split owner, e.g. unc (refer, grefcoco)")
    p.set_defaults(func=run, score_parser=p)
