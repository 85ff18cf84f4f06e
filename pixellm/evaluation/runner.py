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

from ..data.errors import DataError, Problem
from ..data.images import ImageReadError, read_image
from ..data.records import QARecord
from ..data.skips import SkipLog, skip_entry
from ..predictor import PixelLMPredictor
from ..processor import clean_user_text
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
    lockstep: bool = False, skipped: list[dict] | None = None,
) -> list[dict]:
    """Prediction records (contract format) for this rank's share of the images.

    A record whose image does not read, or whose question (or teacher-forced answer) writes the
    model's own tokens, gets no prediction (it scores as an empty one) and is appended to
    `skipped` (skips.skip_entry dicts) with the reason.
    lockstep: every rank runs the same sequence of forward passes (the same number of jobs, and
    generation steps until every rank's answers ended). Needed when the model's parameters are
    ZeRO-3-partitioned: each module's forward then gathers its parameters collectively, and a
    rank that ran one forward fewer would leave the others waiting for ever. A job left without
    a usable record then still runs, on a blank image, and its answers are dropped.
    """
    out: list[dict] = []
    skipped = [] if skipped is None else skipped
    images = _ImageCache()
    jobs = plan_jobs(records, batch_size, rank, world_size, lockstep, predictor.device)
    for job in tqdm(jobs, desc=f"eval {mode}", unit="batch", disable=not progress):
        image, usable = _usable(job, mode, images, skipped if job.keep else [])
        keep = job.keep and bool(usable)
        if not keep:
            if not lockstep:
                continue
            image = image or Image.new("RGB", (32, 32))
            usable = usable or [job.records[0]]
        questions = ["?" if not keep else r.question for r in usable]
        if mode == "teacher_forced":
            preds = predictor.segment_with_answers(image, questions, [r.answer if keep else "" for r in usable])
        else:
            preds = predictor.predict_batch(image, questions, max_new_tokens=max_new_tokens, sync_ranks=lockstep)
        if keep:
            out.extend(prediction_record(
                r.image_id, r.question_id, p.text, [s.mask for s in p.segments], [s.score for s in p.segments]
            ) for r, p in zip(usable, preds))
    return out


class _ImageCache:
    """The last image read (jobs come image by image), or the reason it could not be read."""

    def __init__(self) -> None:
        self.path, self.value = None, None

    def get(self, path: Path) -> Image.Image | str:
        if path != self.path:
            self.path = path
            try:
                self.value = read_image(path)
            except ImageReadError as e:
                self.value = f"image {e}"
        return self.value


def _usable(job: Job, mode: str, images: _ImageCache, skipped: list[dict]) -> tuple[Image.Image | None, list[QARecord]]:
    """The job's image (None if unreadable) and its records that can be run; the others are
    appended to `skipped` with the reason."""
    image = images.get(job.records[0].image_path)
    usable = []
    for r in job.records:
        try:
            if isinstance(image, str):
                raise DataError(Problem(str(r.image_path), f"question {r.question_id}", image))
            clean_user_text(r.question, r.answer if mode == "teacher_forced" else None)
            usable.append(r)
        except DataError as e:
            skipped.append(skip_entry(e, source=r.source, stage="eval", question_id=r.question_id))
    return (None if isinstance(image, str) else image), usable


def gather_predictions(preds: list[dict], skipped: list[dict] | None = None) -> tuple[list[dict], list[dict]]:
    """All ranks' predictions (each question once: sharding is by image, so no rank holds
    duplicates) and skipped records, on every rank."""
    skipped = skipped or []
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return preds, skipped
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, (preds, skipped))
    merged = {p["question_id"]: p for part, _ in parts for p in part}
    return list(merged.values()), [e for _, part in parts for e in part]


def evaluate_split(
    predictor: PixelLMPredictor, records: list[QARecord], protocol: str, mode: str, out_dir: str | Path, *,
    batch_size: int = 8, max_new_tokens: int = 128, rank: int = 0, world_size: int = 1,
    split: str | None = None, progress: bool = True, lockstep: bool = False, skips: SkipLog | None = None,
    per: str | None = None,
) -> dict:
    """Predict, write `predictions.jsonl`, score it as `pixellm score` would and write
    `metrics.json` (identical to what `pixellm score` prints for that file). Records that
    cannot be predicted or scored are written to `skips` (rank 0) and counted in the metrics
    (`num_skipped`). `per`: the averaging unit (`units`; None: the protocol's default)."""
    skipped: list[dict] = []
    preds = predict_records(
        predictor, records, mode, batch_size=batch_size, max_new_tokens=max_new_tokens,
        rank=rank, world_size=world_size, progress=progress and rank == 0, lockstep=lockstep, skipped=skipped,
    )
    preds, skipped = gather_predictions(preds, skipped)
    out_dir = Path(out_dir)
    if rank != 0:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    order = {str(r.question_id): i for i, r in enumerate(records)}
    preds.sort(key=lambda p: order.get(str(p["question_id"]), len(order)))
    write_predictions(out_dir / "predictions.jsonl", preds)
    metrics = score_predictions(protocol, records, read_predictions(out_dir / "predictions.jsonl"), skipped=skipped,
                                per=per)
    if skips is not None:
        skips.add(skipped)
    if protocol != "custom" and split is not None:
        metrics["split"] = split
    (out_dir / "metrics.json").write_text(json.dumps(metrics, sort_keys=True, indent=2))
    return metrics
