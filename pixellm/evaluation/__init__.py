"""Evaluation: metrics (gIoU, cIoU overall and over target questions, N-acc, box P@0.5,
count_acc; T-acc for gRefCOCO), the predictions file contract and the `pixellm score` command.

Names are imported on first use, so `pixellm score --help` starts without numpy or scipy."""

from importlib import import_module

_EXPORTS = {
    "metrics": ["PROTOCOLS", "Pair", "PairStats", "Scorer", "mask_iou", "match_masks", "score_questions"],
    "predictions": ["PredictionsError", "prediction_record", "read_predictions", "write_predictions"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'pixellm.evaluation' has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
