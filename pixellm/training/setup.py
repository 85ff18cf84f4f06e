"""Everything train.py builds before its loop: data, loader, engine (one home each)."""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config import Config
from ..data.batch import Batch, collate
from ..data.mixture import MixtureDataset, QADataset, StepSampler
from ..data.sources import load_source, source_name
from ..modeling.pixellm import PixelLM
from ..processor import PixelLMProcessor
from .distributed import DistInfo
from .ds_config import load_deepspeed_config

log = logging.getLogger("pixellm.train")


def seed_everything(seed: int, rank: int = 0) -> None:
    """Same model init on every rank (seed), different dropout streams per rank (seed + rank)."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed)


def build_mixture(cfg: Config, model: PixelLM) -> MixtureDataset:
    """The training mixture from `data.train`, with per-source record counts logged."""
    if not cfg.data.train:
        raise ValueError("data.train is empty: list at least one source in the config")
    proc = PixelLMProcessor.from_model(model, max_length=cfg.data.max_length)
    sets = [
        QADataset(load_source(s, cfg.data, mode="train", where=f"data.train[{i}]"), proc, source_name(s))
        for i, s in enumerate(cfg.data.train)
    ]
    mixture = MixtureDataset(sets, [s.weight for s in cfg.data.train], seed=cfg.data.seed)
    log.info("training mixture: %s", mixture.describe())
    return mixture


def make_loader(data: MixtureDataset, cfg: Config, dist: DistInfo, start_micro_step: int, pad_id: int) -> DataLoader:
    sampler = StepSampler(batch_size=cfg.train.batch_size, rank=dist.rank, world_size=dist.world_size, start_step=start_micro_step)
    workers = cfg.data.num_workers
    return DataLoader(
        data, batch_size=cfg.train.batch_size, sampler=sampler, collate_fn=partial(collate, pad_id=pad_id),
        num_workers=workers, persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
        pin_memory=dist.device.type == "cuda",
    )


def make_engine(model: PixelLM, cfg: Config, dist: DistInfo):
    """DeepSpeed engine over the trainable parameters, config filled from `cfg.train`."""
    import deepspeed

    ds_cfg = load_deepspeed_config(cfg.train.deepspeed, cfg.train, world_size=dist.world_size, device=dist.device)
    if cfg.train.gradient_checkpointing:
        model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.language_model.enable_input_require_grads()
    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=ds_cfg)
    return engine


@dataclass
class TrainResult:
    """losses: per optimizer step (mean over micro-batches) of this process; checksum: sum of
    every trainable weight (ranks of one run must agree)."""

    losses: list[float]
    model: PixelLM
    checksum: float


def param_checksum(model: PixelLM) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters() if p.requires_grad))


class StepMeter:
    """Per-step bookkeeping: mean losses over micro-batches, samples/s, source and skip counts."""

    def __init__(self) -> None:
        self.sources: Counter = Counter()
        self.skipped = 0
        self.dropped_targets = 0
        self.reset()

    def reset(self) -> None:
        self.sums: Counter = Counter()
        self.micro = 0
        self.samples = 0

    def add(self, losses: dict[str, float], batch: Batch) -> None:
        self.sums.update(losses)
        self.micro += 1
        self.samples += batch.num_rows
        for s in batch.rows or []:
            self.sources[s.extra.get("source", s.source)] += 1
            self.skipped += len(s.extra.get("skipped", []))
            self.dropped_targets += s.extra.get("dropped_targets", 0)

    def means(self) -> dict[str, float]:
        return {k: v / max(self.micro, 1) for k, v in self.sums.items()}
