"""Evaluation: metrics (gIoU, cIoU overall and over target questions, N-acc, box P@0.5,
count_acc; T-acc for gRefCOCO), the predictions file contract and the `pixellm score` command."""

from .metrics import PROTOCOLS, Pair, PairStats, Scorer, mask_iou, match_masks, score_questions
from .predictions import PredictionsError, prediction_record, read_predictions, write_predictions

__all__ = [
    "PROTOCOLS", "Pair", "PairStats", "Scorer", "mask_iou", "match_masks", "score_questions",
    "PredictionsError", "prediction_record", "read_predictions", "write_predictions",
]
