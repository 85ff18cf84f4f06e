"""Evaluation: metrics (gIoU, cIoU overall and over target questions, N-acc, box P@0.5,
count_acc; T-acc for gRefCOCO), the predictions file contract and the `pixellm score` command.

Names are imported on first use, so `pixellm score --help` starts without numpy or scipy."""

from ..lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, globals(), {
    "metrics": ["PROTOCOLS", "Pair", "PairStats", "Scorer", "mask_iou", "match_masks", "score_questions"],
    "predictions": ["PredictionsError", "prediction_record", "read_predictions", "write_predictions"],
})
