"""The predictions file (*contract*): JSON Lines, one record per question:

    {"image_id": ..., "question_id": "...", "text": "...",
     "masks": [{"size": [h, w], "counts": "<COCO compressed RLE>"}, ...], "scores": [...]}

`question_id` is a string (an int is accepted and read as its decimal string); `masks` follow the
order of the codebook groups in `text`; `scores`, when present, has one number per mask.
Evaluation writes it with `write_predictions`; the scorer reads it with `read_predictions`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pixellm.data.errors import DataError, Problem
from pixellm.data.masks import MaskDecodeError, decode_mask, encode_rle

MAX_REPORTED = 20


class PredictionsError(DataError):
    """A predictions file or record that cannot be used; `problems` lists every one found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        lines = [str(p) for p in problems[:MAX_REPORTED]]
        if len(problems) > MAX_REPORTED:
            lines.append(f"... and {len(problems) - MAX_REPORTED} more problem(s)")
        super().__init__(problems[0] if len(problems) == 1 else "\n".join(lines))
        self.problems = list(problems)


def encode_masks(masks: Iterable[np.ndarray]) -> list[dict]:
    """(H, W) bool masks -> COCO compressed RLEs with str counts."""
    return [encode_rle(np.asarray(m, dtype=bool)) for m in masks]


def prediction_record(
    image_id,
    question_id: str,
    text: str,
    masks: Sequence[np.ndarray],
    scores: Sequence[float] | None = None,
) -> dict:
    """One predictions record from full-resolution bool masks (encoded to RLE)."""
    scores = [1.0] * len(masks) if scores is None else [float(s) for s in scores]
    if len(scores) != len(masks):
        raise ValueError(f"question {question_id}: {len(masks)} masks but {len(scores)} scores")
    return {
        "image_id": image_id,
        "question_id": str(question_id),
        "text": text,
        "masks": encode_masks(masks),
        "scores": scores,
    }


def check_record(rec) -> str | None:
    """The first reason `rec` breaks the contract, or None if it is valid."""
    if not isinstance(rec, dict):
        return f"a record must be a JSON object, got {type(rec).__name__}"
    qid = rec.get("question_id")
    if isinstance(qid, bool) or not isinstance(qid, (str, int)):
        return "'question_id' is missing or not a string"
    if "text" in rec and not isinstance(rec["text"], str):
        return "'text' must be a string"
    masks = rec.get("masks")
    if not isinstance(masks, list):
        return "'masks' is missing or not a list"
    sizes = set()
    for k, m in enumerate(masks):
        reason = _check_rle(m)
        if reason:
            return f"masks[{k}]: {reason}"
        sizes.add(tuple(m["size"]))
    if len(sizes) > 1:
        return f"masks have different sizes {sorted(sizes)}"
    scores = rec.get("scores")
    if scores is not None:
        if not isinstance(scores, list) or not all(_is_number(s) for s in scores):
            return "'scores' must be a list of numbers"
        if len(scores) != len(masks):
            return f"{len(masks)} masks but {len(scores)} scores"
    return None


def _check_rle(m) -> str | None:
    if not isinstance(m, dict) or "size" not in m or "counts" not in m:
        return "a mask must be a COCO RLE object with 'size' and 'counts'"
    size = m["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v >= 0 for v in size)):
        return f"'size' must be [height, width], got {size!r}"
    if not isinstance(m["counts"], str):
        return "'counts' must be a compressed RLE string"
    return None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def write_predictions(path: str | Path, records: Iterable[dict]) -> int:
    """Write records as JSON Lines (validated, unique question ids); returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for n, rec in enumerate(records, 1):
            reason = check_record(rec)
            if reason is None and str(rec["question_id"]) in seen:
                reason = f"duplicate question_id {rec['question_id']!r}"
            if reason:
                raise PredictionsError([Problem(str(path), f"record {n}", reason)])
            seen.add(str(rec["question_id"]))
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return n


def read_predictions(path: str | Path) -> dict[str, dict]:
    """{question_id: record} from a predictions file. Blank lines are skipped; every bad line
    (not JSON, breaks the contract, duplicate question_id) is reported with its line number in
    one PredictionsError."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsError([Problem(str(path), "file", "predictions file not found")])
    out: dict[str, dict] = {}
    first_line: dict[str, int] = {}
    problems: list[Problem] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            reason, rec = _parse_line(line)
            if reason is None:
                qid = str(rec["question_id"])
                if qid in first_line:
                    reason = f"duplicate question_id {qid!r} (first on line {first_line[qid]})"
                else:
                    first_line[qid] = lineno
                    out[qid] = {**rec, "question_id": qid}
            if reason:
                problems.append(Problem(str(path), f"line {lineno}", reason))
    if problems:
        raise PredictionsError(problems)
    return out


def _parse_line(line: str) -> tuple[str | None, dict | None]:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        return f"not valid JSON ({e.msg} at column {e.colno})", None
    return check_record(rec), rec


def decode_prediction_masks(rec: dict, height: int, width: int) -> list[np.ndarray]:
    """A record's masks as (height, width) bool arrays; a wrong size or corrupt RLE raises
    PredictionsError naming the question."""
    masks = []
    for k, spec in enumerate(rec.get("masks", [])):
        try:
            masks.append(decode_mask(spec, height, width))
        except MaskDecodeError as e:
            where = f"question {rec.get('question_id')!r} masks[{k}]"
            raise PredictionsError([Problem("predictions", where, str(e))]) from None
    return masks
