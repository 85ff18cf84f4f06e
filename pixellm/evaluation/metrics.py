"""Segmentation metrics on full-resolution numpy bool masks (conventions: README "Evaluation").

A *pair* is one (prediction, ground truth) comparison; every protocol turns a question into
pairs and the split's scores are built from them:

* gIoU = mean pair IoU; cIoU = sum of intersections / sum of unions (int64 sums). Both are over
  every pair of the split.
* Empty prediction vs empty GT is IoU 1 with intersection 0 and union 0. So a question without
  a target answered with no mask is a perfect pair, and on a split with many such questions a
  model that never emits a mask gets a high overall gIoU. Hence also:
* gIoU_targets / cIoU_targets = the same over the pairs of *target questions* only (questions
  with at least one non-empty GT mask; for muse/custom this includes their unmatched
  predictions); None without a target question.
* N-acc = no-target questions whose prediction has no non-empty mask (no mask, or only empty
  masks) / no-target questions (`num_no_target`); None without a no-target question. T-acc
  (gRefCOCO only) = target questions with a non-empty predicted mask / target questions.
  One definition for every protocol (`has_target`, `predicts_nothing`, `TargetTally`).
* box P@0.5 = fraction of pairs whose mask bounding boxes have IoU >= 0.5.
* count_acc = fraction of questions with as many predicted masks as GT masks.

Protocols (`PROTOCOLS`):

* ``muse`` / ``custom``: Hungarian matching maximising IoU; every matched pair, unmatched GT
  and unmatched prediction is one pair (unmatched: IoU 0, full area added to the union, even
  for an empty predicted mask). A question with no GT and no prediction is one empty-vs-empty
  pair.
* ``refer``: one pair per GT target; target j is compared with the j-th predicted mask (masks
  follow the text order), a missing one is an empty mask, extra predictions are not scored
  (count_acc sees them).
* ``grefcoco``: one pair per expression, union of GT masks vs union of predicted masks
  (ReLA conventions); "no target" means an empty mask. As ReLA's evaluator: a no-target
  expression answered with nothing is IoU 1 (adds 0 / 0), answered with a mask IoU 0 (adds its
  area to the union); a target expression answered with nothing is IoU 0 (adds the GT area).
  N-acc = TP / (TP + FN) over no-target expressions, T-acc = TN / (TN + FP) over target ones,
  Pr@0.7/0.8/0.9 = target expressions with IoU >= X / target expressions.
* ``reasonseg``: one pair per query, union of predicted masks vs the GT mask, with the GT's
  ignore pixels (value 255 in LISA's ground truth) left out of both intersection and union
  (LISA conventions); reported overall and per query kind (`short`, `long`: `is_sentence`).
* ``joint``: the grounding half of a joint VQA + grounding item (evaluation.joint): one pair,
  union of predicted masks vs the GT mask, as ``grefcoco``.

Every result says how it was computed: `empty_pair_iou` (1: empty vs empty is a perfect pair),
`protocol`, `num_questions` scored and `num_missing_predictions`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..constants import SCORING_PROTOCOLS

PROTOCOLS = SCORING_PROTOCOLS
GREFCOCO_PR_THRESHOLDS = (0.7, 0.8, 0.9)  # ReLA's table columns


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """(intersection, union) pixel counts of two same-shape bool masks."""
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape}, ground truth {gt.shape}")
    pred, gt = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))


def iou_value(inter: int, union: int) -> float:
    """inter / union, with 0 / 0 (empty vs empty) = 1.0."""
    return 1.0 if union == 0 else inter / union


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box (x0, y0, x1, y1), end-exclusive pixel coordinates; None for an empty mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """IoU of two end-exclusive integer boxes (x0, y0, x1, y1)."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def box_hit(pred: np.ndarray | None, gt: np.ndarray | None, threshold: float = 0.5) -> bool:
    """Box IoU of the masks' bounding boxes >= threshold. A missing or empty mask has no box:
    a miss, except empty vs empty (counted as a hit, like its IoU of 1)."""
    pb = mask_box(pred) if pred is not None else None
    gb = mask_box(gt) if gt is not None else None
    if pb is None or gb is None:
        return pb is None and gb is None
    return box_iou(pb, gb) >= threshold


def match_masks(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> list[tuple[int | None, int | None]]:
    """Hungarian matching of predictions to GT maximising total IoU.

    Returns (pred index, gt index) for each assigned pair (sorted by pred index; an assigned
    pair may have IoU 0), then (i, None) for unmatched predictions and (None, j) for unmatched
    GT. Deterministic: scipy's solver is deterministic for a given IoU matrix.
    """
    ious = np.zeros((len(preds), len(gts)), dtype=np.float64)
    for i, p in enumerate(preds):
        for j, g in enumerate(gts):
            ious[i, j] = iou_value(*mask_iou(p, g))
    from scipy.optimize import linear_sum_assignment  # scipy only where matching happens

    rows, cols = linear_sum_assignment(ious, maximize=True) if ious.size else ([], [])
    pairs: list[tuple[int | None, int | None]] = [(int(i), int(j)) for i, j in zip(rows, cols, strict=True)]
    matched_p, matched_g = {i for i, _ in pairs}, {j for _, j in pairs}
    pairs += [(i, None) for i in range(len(preds)) if i not in matched_p]
    pairs += [(None, j) for j in range(len(gts)) if j not in matched_g]
    return pairs


@dataclass(frozen=True)
class Pair:
    """One scored comparison: pixel intersection and union, IoU, and the box P@0.5 hit."""

    inter: int
    union: int
    iou: float
    box_hit: bool


def score_pair(pred: np.ndarray | None, gt: np.ndarray | None) -> Pair:
    """A pair from an optional prediction and optional GT (None = unmatched / missing).

    An unmatched side contributes IoU 0 and its whole area to the union; two empty masks are
    IoU 1. At least one side must be given.
    """
    if pred is None and gt is None:
        raise ValueError("a pair needs a prediction or a ground-truth mask")
    if pred is None or gt is None:
        area = int(np.count_nonzero(gt if pred is None else pred))
        return Pair(0, area, 0.0, False)
    inter, union = mask_iou(pred, gt)
    return Pair(inter, union, iou_value(inter, union), box_hit(pred, gt))


def muse_pairs(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> list[Pair]:
    """MUSE pairs of one question (Hungarian matching; no GT and no prediction = one IoU-1 pair)."""
    if not preds and not gts:
        return [Pair(0, 0, 1.0, True)]
    return [
        score_pair(preds[i] if i is not None else None, gts[j] if j is not None else None)
        for i, j in match_masks(preds, gts)
    ]


def refer_pairs(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> list[Pair]:
    """Referring pairs of one question: GT target j vs predicted mask j (missing = empty)."""
    if not gts:  # not expected on RefCOCO; score as empty GT vs the first prediction
        return [_empty_or(preds[0] if preds else None, None)]
    return [_empty_or(preds[j] if j < len(preds) else None, g) for j, g in enumerate(gts)]


def _empty_or(pred: np.ndarray | None, gt: np.ndarray | None) -> Pair:
    """score_pair with a missing mask replaced by an empty one of the other's shape."""
    if pred is None and gt is None:
        return Pair(0, 0, 1.0, True)
    shape = (gt if pred is None else pred).shape
    empty = np.zeros(shape, dtype=bool)
    return score_pair(empty if pred is None else pred, empty if gt is None else gt)


def union_mask(masks: Sequence[np.ndarray], shape: tuple[int, int] | None) -> np.ndarray | None:
    """OR of masks; an empty list gives an empty mask of `shape` (None if shape is unknown)."""
    if not masks:
        return None if shape is None else np.zeros(shape, dtype=bool)
    out = np.zeros(masks[0].shape, dtype=bool)
    for m in masks:
        out |= m.astype(bool, copy=False)
    return out


def grefcoco_pair(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> Pair:
    """gRefCOCO pair: union of GT masks vs union of predicted masks (missing = empty)."""
    shape = gts[0].shape if gts else (preds[0].shape if preds else None)
    return _empty_or(union_mask(preds, shape), union_mask(gts, shape))


def count_acc(num_pred: Sequence[int], num_gt: Sequence[int]) -> float | None:
    """Fraction of questions whose predicted mask count equals the GT target count."""
    if len(num_pred) != len(num_gt):
        raise ValueError("count_acc needs one predicted and one GT count per question")
    if not num_gt:
        return None
    return sum(int(p == g) for p, g in zip(num_pred, num_gt, strict=True)) / len(num_gt)


def has_target(gts: Sequence[np.ndarray]) -> bool:
    """Whether a question has a target: at least one non-empty GT mask. gRefCOCO stores a
    no-target expression as an empty mask, other sources as no mask; both mean no target."""
    return any(np.any(g) for g in gts)


def predicts_nothing(preds: Sequence[np.ndarray]) -> bool:
    """Whether a prediction segments nothing: no mask, or only empty masks (what ReLA's
    gRefCOCO N-acc counts as a correct answer to a no-target expression)."""
    return not any(np.any(p) for p in preds)


@dataclass
class TargetTally:
    """Questions counted by (has a target, prediction segments something): N-acc and T-acc.

    The same definition serves every protocol, so N-acc means the same on gRefCOCO, MUSE and
    custom data.
    """

    no_target: int = 0
    no_target_empty: int = 0  # no-target questions answered with nothing: N-acc's numerator
    target: int = 0
    target_nonempty: int = 0  # target questions answered with some mask: T-acc's numerator

    def add(self, target: bool, pred_empty: bool) -> None:
        if target:
            self.target += 1
            self.target_nonempty += int(not pred_empty)
        else:
            self.no_target += 1
            self.no_target_empty += int(pred_empty)

    @property
    def n_acc(self) -> float | None:
        """Share of no-target questions predicted empty (None without such questions)."""
        return self.no_target_empty / self.no_target if self.no_target else None

    @property
    def t_acc(self) -> float | None:
        """Share of target questions predicted non-empty (None without such questions)."""
        return self.target_nonempty / self.target if self.target else None


@dataclass
class PairStats:
    """Accumulator of pairs over a split: int64-safe Python int sums and the IoU list."""

    inter: int = 0
    union: int = 0
    iou_sum: float = 0.0
    box_hits: int = 0
    num_pairs: int = 0

    def add(self, pair: Pair) -> None:
        self.inter += pair.inter
        self.union += pair.union
        self.iou_sum += pair.iou
        self.box_hits += int(pair.box_hit)
        self.num_pairs += 1

    @property
    def giou(self) -> float | None:
        """Mean pair IoU (None without pairs)."""
        return self.iou_sum / self.num_pairs if self.num_pairs else None

    @property
    def ciou(self) -> float | None:
        """Sum of intersections / sum of unions; 1.0 if every pair was empty vs empty."""
        return iou_value(self.inter, self.union) if self.num_pairs else None

    @property
    def box_precision(self) -> float | None:
        """Fraction of pairs with box IoU >= 0.5."""
        return self.box_hits / self.num_pairs if self.num_pairs else None


def reasonseg_pair(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], ignore: np.ndarray | None) -> Pair:
    """ReasonSeg pair: union of predicted masks vs union of GT masks, outside `ignore` (LISA's
    255 pixels: in neither intersection nor union)."""
    shape = gts[0].shape if gts else (preds[0].shape if preds else (None if ignore is None else ignore.shape))
    pred, gt = union_mask(preds, shape), union_mask(gts, shape)
    if ignore is not None and ignore.any():
        keep = ~ignore.astype(bool, copy=False)
        pred, gt = (None if m is None else m & keep for m in (pred, gt))
    return _empty_or(pred, gt)


_PAIRS = {"muse": muse_pairs, "custom": muse_pairs, "refer": refer_pairs}


def question_pairs(protocol: str, preds: Sequence[np.ndarray], gts: Sequence[np.ndarray],
                   ignore: np.ndarray | None = None) -> list[Pair]:
    """The pairs one question contributes under `protocol` (`ignore`: reasonseg only)."""
    if protocol in ("grefcoco", "joint"):
        return [grefcoco_pair(preds, gts)]
    if protocol == "reasonseg":
        return [reasonseg_pair(preds, gts, ignore)]
    if protocol not in _PAIRS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    return _PAIRS[protocol](preds, gts)


class Scorer:
    """Streams questions one at a time (masks can be dropped after `add`) and reports the split:
    `scorer.add(gts, preds)` per question, then `scorer.result()`."""

    def __init__(self, protocol: str) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
        self.protocol = protocol
        self.stats = PairStats()  # every pair: the overall gIoU / cIoU / box P@0.5
        self.target_stats = PairStats()  # pairs of target questions only: gIoU_targets, ...
        self.tally = TargetTally()
        self.num_pred: list[int] = []
        self.num_gt: list[int] = []
        self.missing = 0
        self.groups: dict[str, PairStats] = {}  # per question kind (ReasonSeg: short / long)
        # gRefCOCO's Pr@X (ReLA): target expressions whose IoU >= X, over target expressions
        self.precision_hits = dict.fromkeys(GREFCOCO_PR_THRESHOLDS, 0)

    def add(self, gts: Sequence[np.ndarray], preds: Sequence[np.ndarray] | None, *,
            ignore: np.ndarray | None = None, group: str | None = None) -> list[Pair]:
        """Score one question; preds=None means it has no prediction record (= zero masks).
        `ignore`: pixels left out of the pair (reasonseg); `group`: the question's kind, scored
        separately as well."""
        if preds is None:
            self.missing += 1
            preds = []
        pairs = question_pairs(self.protocol, preds, gts, ignore)
        target = has_target(gts)
        for pair in pairs:
            self.stats.add(pair)
            if target:
                self.target_stats.add(pair)
            if group is not None:
                self.groups.setdefault(group, PairStats()).add(pair)
            if target:
                for t in self.precision_hits:
                    self.precision_hits[t] += int(pair.iou >= t)
        self.tally.add(target, predicts_nothing(preds))
        self.num_pred.append(len(preds))
        self.num_gt.append(len(gts))
        return pairs

    def result(self) -> dict:
        """Split scores (definitions in the module docstring): gIoU, cIoU over every pair;
        gIoU_targets, cIoU_targets over target questions; N-acc over no-target questions;
        box_P@0.5, count_acc, counts; T-acc for grefcoco."""
        out = {
            "protocol": self.protocol,
            "empty_pair_iou": 1,
            "gIoU": self.stats.giou,
            "cIoU": self.stats.ciou,
            "gIoU_targets": self.target_stats.giou,
            "cIoU_targets": self.target_stats.ciou,
            "N-acc": self.tally.n_acc,
            "box_P@0.5": self.stats.box_precision,
            "count_acc": count_acc(self.num_pred, self.num_gt),
            "num_questions": len(self.num_gt),
            "num_no_target": self.tally.no_target,
            "num_pairs": self.stats.num_pairs,
            "num_missing_predictions": self.missing,
            "intersection": self.stats.inter,
            "union": self.stats.union,
        }
        if self.protocol == "grefcoco":
            out["T-acc"] = self.tally.t_acc
            for t, hits in self.precision_hits.items():
                out[f"Pr@{t}"] = hits / self.tally.target if self.tally.target else None
        for name, stats in sorted(self.groups.items()):
            out[name] = {"gIoU": stats.giou, "cIoU": stats.ciou, "num_questions": stats.num_pairs,
                         "intersection": stats.inter, "union": stats.union}
        return out


def score_questions(
    protocol: str,
    gt: dict[str, Sequence[np.ndarray]],
    preds: dict[str, Sequence[np.ndarray]],
) -> dict:
    """Score a split held in memory: {question_id: GT masks} against {question_id: predicted masks}.

    A question without a prediction scores as zero predicted masks; predictions for unknown
    question ids are ignored with a warning giving their number (`num_ignored_predictions`).
    """
    scorer = Scorer(protocol)
    for qid in sorted(gt):
        scorer.add(gt[qid], preds.get(qid))
    out = scorer.result()
    out["num_ignored_predictions"] = warn_ignored(set(preds) - set(gt))
    return out


def warn_ignored(extra_ids: set) -> int:
    """Warn about predictions whose question is not in the scored split; returns their number."""
    if extra_ids:
        sample = ", ".join(sorted(map(str, extra_ids))[:5])
        warnings.warn(
            f"ignored {len(extra_ids)} prediction(s) for questions outside the scored split (e.g. {sample})",
            stacklevel=2,
        )
    return len(extra_ids)
