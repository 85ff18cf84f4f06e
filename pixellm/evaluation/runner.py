"""Evaluation runs: predictions for a split (images encoded once, sharded over ranks without
duplicates), written in the contract format, then scored by the same code as `pixellm score`."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Job:
    """One forward pass of evaluation: up to `batch_size` questions about one image. A filler
    job (keep=False) only keeps a rank in step with the others; its answers are dropped."""

    records: list[QARecord]
    keep: bool = True


def plan_jobs(
    records: list[QARecord], batch_size: int, rank: int, world_size: int, lockstep: bool,
    device: torch.device | str = "cpu",
) -> list[Job]:
    """This rank's jobs: its share of the images (whole images, so no question is done twice),
    in chunks of `batch_size` questions. lockstep: every rank gets as many jobs as the busiest
    one, the missing ones filled with a repeat of a job of the split (dropped afterwards)."""
    def chunks(groups):
        return [Job(g[i : i + batch_size]) for g in groups for i in range(0, len(g), batch_size)]

    groups = group_by_image(records)
    jobs = chunks(groups[rank::world_size])
    if lockstep and world_size > 1:
        most = all_ranks_max(len(jobs), device)
        filler = (jobs or chunks(groups[:1]))[0]
        jobs += [Job(filler.records, keep=False)] * (most - len(jobs))
    return jobs


def all_ranks_max(value: int, device: torch.device | str) -> int:
    t = torch.tensor([value], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t)


def predict_records(
    predictor: PixelLMPredictor, records: list[QARecord], mode: str, *, batch_size: int = 8,
    max_new_tokens: int = 128, rank: int = 0, world_size: int = 1, progress: bool = True,
    lockstep: bool = False,
) -> list[dict]:
    """Prediction records (contract format) for this rank's share of the images.

    lockstep: every rank runs the same sequence of forward passes (the same number of jobs, and
    generation steps until every rank's answers ended). Needed when the model's parameters are
    ZeRO-3-partitioned: each module's forward then gathers its parameters collectively, and a
    rank that ran one forward fewer would leave the others waiting for ever.
    """
    out, image, path = [], None, None
    jobs = plan_jobs(records, batch_size, rank, world_size, lockstep, predictor.device)
    for job in tqdm(jobs, desc=f"eval {mode}", unit="batch", disable=not progress):
        if job.records[0].image_path != path:
            path = job.records[0].image_path
            with Image.open(path) as im:
                image = im.convert("RGB")
        questions = [r.question for r in job.records]
        if mode == "teacher_forced":
            preds = predictor.segment_with_answers(image, questions, [r.answer for r in job.records])
        else:
            preds = predictor.predict_batch(image, questions, max_new_tokens=max_new_tokens, sync_ranks=lockstep)
        if job.keep:
            out.extend(prediction_record(
                r.image_id, r.question_id, p.text, [s.mask for s in p.segments], [s.score for s in p.segments]
            ) for r, p in zip(job.records, preds))
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
    split: str | None = None, progress: bool = True, lockstep: bool = False,
) -> dict:
    """Predict, write `predictions.jsonl`, score it as `pixellm score` would and write
    `metrics.json` (identical to what `pixellm score` prints for that file)."""
    preds = predict_records(
        predictor, records, mode, batch_size=batch_size, max_new_tokens=max_new_tokens,
        rank=rank, world_size=world_size, progress=progress and rank == 0, lockstep=lockstep,
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
