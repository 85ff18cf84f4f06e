"""Evaluation runs: predictions for a split (images encoded once, sharded over ranks without
duplicates), written in the contract format, then scored by the same code as `pixellm score`."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from ..data.records import QARecord
from ..predictor import PixelLMPredictor
from .predictions import prediction_record, read_predictions, write_predictions
from .score import score_predictions


def group_by_image(records: list[QARecord]) -> list[list[QARecord]]:
    """Records grouped by image, in first-appearance order (deterministic)."""
    groups: OrderedDict[str, list[QARecord]] = OrderedDict()
    for r in records:
        groups.setdefault(str(r.image_path), []).append(r)
    return list(groups.values())


def predict_records(
    predictor: PixelLMPredictor, records: list[QARecord], mode: str, *, batch_size: int = 8,
    max_new_tokens: int = 128, rank: int = 0, world_size: int = 1, progress: bool = True,
) -> list[dict]:
    """Prediction records (contract format) for this rank's share of the images."""
    out = []
    images = group_by_image(records)[rank::world_size]
    for group in tqdm(images, desc=f"eval {mode}", unit="img", disable=not progress):
        with Image.open(group[0].image_path) as im:
            image = im.convert("RGB")
        for i in range(0, len(group), batch_size):
            chunk = group[i : i + batch_size]
            questions = [r.question for r in chunk]
            if mode == "teacher_forced":
                preds = predictor.segment_with_answers(image, questions, [r.answer for r in chunk])
            else:
                preds = predictor.predict_batch(image, questions, max_new_tokens=max_new_tokens)
            for r, p in zip(chunk, preds):
                out.append(prediction_record(
                    r.image_id, r.question_id, p.text, [s.mask for s in p.segments], [s.score for s in p.segments]
                ))
    return out


def gather_predictions(preds: list[dict]) -> list[dict]:
    """All ranks' predictions on every rank, each question once (sharding is by image, so no
    rank holds padding duplicates)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return preds
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, preds)
    merged = {p["question_id"]: p for part in parts for p in part}
    return list(merged.values())


def evaluate_split(
    predictor: PixelLMPredictor, records: list[QARecord], protocol: str, mode: str, out_dir: str | Path, *,
    batch_size: int = 8, max_new_tokens: int = 128, rank: int = 0, world_size: int = 1,
    split: str | None = None, progress: bool = True,
) -> dict:
    """Predict, write `predictions.jsonl`, score it as `pixellm score` would and write
    `metrics.json` (identical to what `pixellm score` prints for that file)."""
    preds = predict_records(
        predictor, records, mode, batch_size=batch_size, max_new_tokens=max_new_tokens,
        rank=rank, world_size=world_size, progress=progress and rank == 0,
    )
    preds = gather_predictions(preds)
    out_dir = Path(out_dir)
    if rank != 0:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    order = {str(r.question_id): i for i, r in enumerate(records)}
    preds.sort(key=lambda p: order.get(str(p["question_id"]), len(order)))
    write_predictions(out_dir / "predictions.jsonl", preds)
    metrics = score_predictions(protocol, records, read_predictions(out_dir / "predictions.jsonl"))
    if protocol != "custom" and split is not None:
        metrics["split"] = split
    (out_dir / "metrics.json").write_text(json.dumps(metrics, sort_keys=True, indent=2))
    return metrics
