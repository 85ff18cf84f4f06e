"""Periodic validation during training: generated answers on `data.val`, mask gIoU/cIoU."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..data.skips import SkipLog, skip_entry
from ..data.sources import load_source, source_name
from ..evaluation.runner import evaluate_split, group_by_image
from ..modeling.zero3 import is_partitioned
from ..predictor import PixelLMPredictor
from .distributed import DistInfo

PROTOCOLS = {"synthetic": "custom", "custom": "custom", "muse": "muse", "refer": "refer", "grefcoco": "grefcoco",
             "reasonseg": "reasonseg"}


def limit_images(records: list, limit: int | None) -> list:
    """The records of the first `limit` images (all when None)."""
    if limit is None:
        return records
    return [r for group in group_by_image(records)[:limit] for r in group]


def validate(model, cfg: Config, dist: DistInfo, out_dir: Path, skips: SkipLog | None = None) -> dict[str, float]:
    """Evaluate every `data.val` source with generated answers; returns flat "val/..." metrics
    (on rank 0; {} on the others). Each rank predicts its share of the images; under ZeRO-3
    the ranks run in lockstep (`predict_records`), as every forward gathers parameters."""
    was_training = model.training
    predictor = PixelLMPredictor(model)
    flat: dict[str, float] = {}
    for i, spec in enumerate(cfg.data.val):
        if spec.type not in PROTOCOLS:
            continue  # text-only sources (vqa) have no masks to score
        name = source_name(spec)
        bad: list = []
        records = limit_images(load_source(spec, cfg.data, mode="eval", where=f"data.val[{i}]", skipped=bad),
                               cfg.eval.limit_images)
        if skips is not None and dist.is_main:
            skips.add([skip_entry(p, source=name, stage="load") for p in bad])
        metrics = evaluate_split(
            predictor, records, PROTOCOLS[spec.type], "generated", out_dir / name.replace(":", "_").replace("/", "_"),
            batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
            rank=dist.rank, world_size=dist.world_size, split=spec.split, progress=dist.is_main,
            lockstep=any(is_partitioned(p) for p in model.parameters()), skips=skips,
        )
        for key in ("gIoU", "gIoU_targets", "cIoU", "count_acc", "N-acc", "box_P@0.5"):
            if metrics.get(key) is not None:
                flat[f"val/{name}/{key}"] = metrics[key]
    model.train(was_training)
    return flat
