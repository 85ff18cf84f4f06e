"""Joint VQA + grounding evaluation (PixMMVP-style): is the answer right, is the object it is
about grounded, and how do the two go together. Data format: `pixellm.data.joint`.

Per item the model answers two prompts about the image, both generated:

* the VQA prompt (`data.joint.vqa_prompt`): its text is judged by `answer_is_right`;
* the grounding prompt ("Segment: " + object, the REFER evaluation prompt): the union of its
  predicted masks vs the GT mask is the item's one pair, as on gRefCOCO / ReasonSeg
  (`metrics.grefcoco_pair`: missing = empty, empty vs empty = IoU 1). The item is *grounded*
  when that IoU >= GROUNDED_THRESHOLD (0.5).

The predictions file is the usual contract (`predictions.py`: "text" and "masks" are the
grounding answer) with one extra field per record, "vqa_text": the answer to the VQA prompt.
An item without a record scores as a wrong answer and no mask (`num_missing_predictions`).

`score_joint` is the pure scoring function; `score.score_predictions("joint", ...)` (and so
`pixellm score joint`) decodes a predictions file and calls it; `evaluate_joint` runs a model.
Both passes are sharded over ranks by image as the other datasets are (`runner.predict_records`),
and gathered on rank 0, which writes the files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..constants import SEG_PLACEHOLDER
from ..data.joint import LETTERS
from .metrics import Scorer

if TYPE_CHECKING:
    from ..data.records import QARecord
    from ..data.skips import SkipLog
    from ..predictor import PixelLMPredictor

GROUNDED_THRESHOLD = 0.5
TABLE_KEYS = ("right_grounded", "right_not_grounded", "wrong_grounded", "wrong_not_grounded")
VQA_FIELD = "vqa_text"
"""The predictions record's field holding the answer to the VQA prompt."""

_PUNCTUATION = re.compile(r"[^\w\s]")
_STANDALONE_CAPITAL = re.compile(r"(?<![^\W_])[A-Z](?![^\W_])")


def normalize_answer(text: str) -> str:
    """Lower case, `<seg>` markers and punctuation removed, spaces collapsed, a leading "the"
    dropped: "The wing's OPEN." -> "wings open"."""
    words = _PUNCTUATION.sub("", text.replace(SEG_PLACEHOLDER, " ").lower()).split()
    if words[:1] == ["the"]:
        words = words[1:]
    return " ".join(words)


def first_option_letter(text: str, num_choices: int) -> str | None:
    """The first standalone capital letter of `text` that is one of the options' letters
    ("B" in "I think B. closed" with 2 choices: "I" is not an option). Lower-case letters are
    never read as options ("a" is an article), but a capital "A" starting a sentence is."""
    letters = LETTERS[:num_choices]
    return next((m.group(0) for m in _STANDALONE_CAPITAL.finditer(text) if m.group(0) in letters), None)


def answer_is_right(text: str, choices: Sequence[str] | None, answer: str) -> bool:
    """Whether the model's answer `text` is right.

    Multiple choice (`choices` given, `answer` the right letter): right if the first standalone
    option letter in the text (`first_option_letter`) is the right letter, or if the whole text,
    normalised (`normalize_answer`), equals the right choice's normalised text.
    Short answer (`choices` None, `answer` the reference text): right if the normalised text
    equals the normalised reference, or the normalised reference occurs in it as whole words
    ("two" in "there are two cats", not "cat" in "concatenate").
    """
    said = normalize_answer(text)
    if choices:
        right_text = normalize_answer(choices[LETTERS.index(answer)])
        return first_option_letter(text, len(choices)) == answer or said == right_text
    reference = normalize_answer(answer)
    return said == reference or f" {reference} " in f" {said} "


@dataclass(frozen=True)
class JointItem:
    """One scored item. gt_mask: (H, W) bool. choices: None for a short-answer item; answer:
    the right letter (multiple choice) or the reference text. vqa_text / pred_masks: the
    model's answer and its grounding masks ((H, W) bool each); both None when the item has no
    prediction record."""

    choices: tuple[str, ...] | None
    answer: str
    gt_mask: np.ndarray
    vqa_text: str | None
    pred_masks: Sequence[np.ndarray] | None


class JointScorer:
    """Streams items (`add`) and reports the split (`result`); masks can be dropped after add."""

    def __init__(self) -> None:
        self.grounding = Scorer("joint")  # one union-vs-GT pair per item: gIoU, cIoU, ...
        self.table = dict.fromkeys(TABLE_KEYS, 0)
        self.right = 0

    def add(self, item: JointItem) -> tuple[bool, bool]:
        """Score one item; returns (answer right, grounded)."""
        right = item.vqa_text is not None and answer_is_right(item.vqa_text, item.choices, item.answer)
        (pair,) = self.grounding.add([item.gt_mask], item.pred_masks)
        grounded = pair.iou >= GROUNDED_THRESHOLD
        self.right += int(right)
        self.table[f"{'right' if right else 'wrong'}_{'grounded' if grounded else 'not_grounded'}"] += 1
        return right, grounded

    def result(self) -> dict:
        """The JSON-able scores (`score_joint`)."""
        out = self.grounding.result()
        n = out["num_questions"]
        grounded = self.table["right_grounded"] + self.table["wrong_grounded"]
        out.update({
            "protocol": "joint",
            "per": "question",
            "answer_acc": self.right / n if n else None,
            "grounded_acc": grounded / n if n else None,
            "grounded_threshold": GROUNDED_THRESHOLD,
            "table": dict(self.table),
            "table_fractions": {k: (v / n if n else None) for k, v in self.table.items()},
        })
        return out


def score_joint(items: Iterable[JointItem]) -> dict:
    """Scores of a split of joint items, one JSON-able dict:

    * `answer_acc`: share of items whose answer is right (`answer_is_right`);
    * `gIoU`, `cIoU` (and the other keys every protocol reports: `gIoU_targets`, `N-acc`,
      `box_P@0.5`, `count_acc`, ...) over one pair per item, the union of the grounding masks
      vs the GT mask; `empty_pair_iou: 1`;
    * `grounded_acc`: share of items with pair IoU >= `grounded_threshold` (0.5);
    * `table`: item counts of right/wrong answer x grounded/not grounded (`right_grounded`,
      `right_not_grounded`, `wrong_grounded`, `wrong_not_grounded`); `table_fractions`: the
      same over `num_questions` (None on an empty split);
    * `num_questions`, `num_missing_predictions`, `protocol: "joint"`, `per: "question"`.
    """
    scorer = JointScorer()
    for item in items:
        scorer.add(item)
    return scorer.result()


def score_joint_predictions(records: Sequence[QARecord], predictions: dict[str, dict],
                            skipped: list[dict] | None = None) -> dict:
    """`score_joint` of `records` (data.joint.load_joint) against `predictions` ({question_id:
    record}, as predictions.read_predictions returns), decoded one item at a time at the
    image's size. Predictions for unknown question ids are ignored with a warning
    (`num_ignored_predictions`); `num_skipped` counts the distinct questions in `skipped`
    (evaluation could not run them: they also count as missing predictions)."""
    from .metrics import warn_ignored
    from .predictions import decode_prediction_masks
    from .score import gt_masks, image_size

    def items():
        for record in records:
            size = image_size(record)
            (gt,) = gt_masks(record, size)
            pred = predictions.get(str(record.question_id))
            choices = record.extra["choices"]
            yield JointItem(
                choices=tuple(choices) if choices else None, answer=record.extra["answer"], gt_mask=gt,
                vqa_text=None if pred is None else (pred.get(VQA_FIELD) or ""),
                pred_masks=None if pred is None else decode_prediction_masks(pred, *size),
            )

    out = score_joint(items())
    out["num_ignored_predictions"] = warn_ignored(set(predictions) - {str(r.question_id) for r in records})
    out["num_skipped"] = len({e["where"] for e in skipped or []})
    return out


def grounding_records(records: Sequence[QARecord]) -> list[QARecord]:
    """The same items asking the grounding prompt instead of the VQA prompt."""
    return [replace(r, question=r.extra["grounding_prompt"]) for r in records]


def merge_predictions(vqa: list[dict], grounding: list[dict]) -> list[dict]:
    """One contract record per question from the two passes: the grounding pass's record (text,
    masks, scores) plus VQA_FIELD from the VQA pass (its masks, if any, are not scored). A
    question only one pass could run keeps what that pass gave (no masks / no VQA_FIELD)."""
    from .predictions import prediction_record

    by_qid = {p["question_id"]: dict(p) for p in grounding}
    for p in vqa:
        rec = by_qid.setdefault(p["question_id"], prediction_record(p["image_id"], p["question_id"], "", []))
        rec[VQA_FIELD] = p["text"]
    return list(by_qid.values())


def predict_joint(predictor: PixelLMPredictor, records: Sequence[QARecord], *, batch_size: int = 8,
                  max_new_tokens: int = 128, rank: int = 0, world_size: int = 1, progress: bool = True,
                  skipped: list[dict] | None = None) -> list[dict]:
    """This rank's merged prediction records: the VQA pass, then the grounding pass (each
    sharded by image as `runner.predict_records` does; both passes give a rank the same
    images). Items that could not run are appended to `skipped`."""
    from .runner import predict_records

    common = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, rank=rank, world_size=world_size,
                  progress=progress, skipped=skipped)
    vqa = predict_records(predictor, list(records), "generated", **common)
    grounding = predict_records(predictor, grounding_records(records), "generated", **common)
    return merge_predictions(vqa, grounding)


def evaluate_joint(predictor: PixelLMPredictor, records: Sequence[QARecord], out_dir: str | Path, *,
                   batch_size: int = 8, max_new_tokens: int = 128, rank: int = 0, world_size: int = 1,
                   progress: bool = True, skips: SkipLog | None = None) -> dict:
    """Predict (both passes), write `predictions.jsonl` in record order, score it as `pixellm
    score joint` would and write `metrics.json`; returns the metrics on rank 0, {} elsewhere.
    Every rank must call it (the predictions are gathered collectively)."""
    from .predictions import read_predictions, write_predictions
    from .runner import gather_predictions
    from .score import score_predictions

    skipped: list[dict] = []
    preds = predict_joint(predictor, records, batch_size=batch_size, max_new_tokens=max_new_tokens, rank=rank,
                          world_size=world_size, progress=progress and rank == 0, skipped=skipped)
    preds, skipped = gather_predictions(preds, skipped)
    if rank != 0:
        return {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    order = {str(r.question_id): i for i, r in enumerate(records)}
    preds.sort(key=lambda p: order.get(str(p["question_id"]), len(order)))
    write_predictions(out_dir / "predictions.jsonl", preds)
    metrics = score_predictions("joint", records, read_predictions(out_dir / "predictions.jsonl"), skipped=skipped)
    if skips is not None:
        skips.add(skipped)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, sort_keys=True, indent=2))
    attention = attention_grounding(predictor, records)  # needs the model: not part of `pixellm score`
    (out_dir / "attention.json").write_text(json.dumps(attention, sort_keys=True, indent=2))
    return {**metrics, "attention": attention}


def attention_grounding(predictor: PixelLMPredictor, records: Sequence[QARecord]) -> dict:
    """Where the object's own words attend, on the grounding prompt with the teacher-forced answer
    naming the object (`pixellm probe-grounding`'s rules: normalised maps, every layer): PointAcc,
    the attention mask's IoU, and chance (the mean GT area fraction)."""
    from ..grounding.probe import GroundingProbe, ProbeSettings
    from .score import gt_masks, image_size

    probe = GroundingProbe(predictor, ProbeSettings(decoder=False, when=False), codebook=True)
    for r in grounding_records(records):
        probe.add(r, gt_masks(r, image_size(r)))
    res = probe.result()
    return {"point_acc": res["aggregate"]["point_acc"], "mask_iou": res["aggregate"]["mask_iou"],
            "chance_point_acc": res["chance_point_acc"], "num_targets": res["num_targets"], "skipped": res["skipped"]}
